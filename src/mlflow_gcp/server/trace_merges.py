"""Trace tags and metadata that MLflow's store writes with `session.merge`, one row at a time,
written by one multi-row upsert instead.

Why: MLflow's client posts a trace's spans (OTLP) before its StartTraceV3, so log_spans creates the
trace and start_trace then takes its conflict path, which merges each of the trace's ~12 metadata
rows and its tags one by one: a SELECT per row, then the INSERTs. With log_spans' per-trace tag
merges, that is the largest share of a trace's write on PostgreSQL (py-spy on our worker under the
bench's trace ingest: the metadata merge loop alone ~30% of the database time).

Here a merge of a new SqlTraceTag / SqlTraceMetadata object is held and written as
`INSERT .. ON CONFLICT (request_id, key) DO UPDATE SET value = EXCLUDED.value`, which leaves the
row the merge would leave, before the session sends anything else (flush, ORM statements, commit),
and after the objects pending in the session (a new trace row the held rows refer to);
a rollback drops it, as it drops merged objects. Rows go in (request_id, key) order, the order
MLflow keeps to avoid deadlocks; a key merged twice keeps its last value, as a second merge does.
A row the session already holds (identity map or pending) is merged by SQLAlchemy as before, so no
object in the session goes stale.
"""

from __future__ import annotations


def upsert_statement(table: str) -> tuple[str, str]:
    """(head, tail) of the multi-row upsert for `table` (store._insert_rows renders the VALUES)."""
    return (f'INSERT INTO {table} (request_id, "key", "value")',
            'ON CONFLICT (request_id, "key") DO UPDATE SET "value" = EXCLUDED."value"')


def ordered_rows(pending: dict[tuple[str, str], str | None]) -> list[tuple]:
    """(request_id, key, value) rows in (request_id, key) order."""
    return [(rid, key, pending[(rid, key)]) for rid, key in sorted(pending)]


def session_class(insert_rows):
    """A SQLAlchemy Session class whose merges of new trace tags and metadata are batched;
    `insert_rows(session, *(head, tail, rows))` writes them in one round trip. None when MLflow's
    models are not the ones this was written for."""
    from sqlalchemy import inspect
    from sqlalchemy.orm import Session

    from mlflow.store.tracking.dbmodels.models import SqlTraceMetadata, SqlTraceTag

    models = {}
    for model in (SqlTraceTag, SqlTraceMetadata):
        columns = [c.name for c in inspect(model).primary_key]
        if columns != ["request_id", "key"] or "value" not in model.__table__.columns:
            return None
        models[model] = upsert_statement(model.__tablename__)

    class BatchedMergeSession(Session):
        def merge(self, instance, *args, **kwargs):
            statement = models.get(type(instance))
            if statement is None or args or kwargs or not self._can_batch(instance):
                return super().merge(instance, *args, **kwargs)
            pending = self.__dict__.setdefault("_mlflow_gcp_merges", {})
            pending.setdefault(type(instance), {})[(instance.request_id, instance.key)] = instance.value
            return instance

        def _can_batch(self, instance) -> bool:
            state = inspect(instance)
            if not state.transient or instance.request_id is None or instance.key is None:
                return False
            ident = state.mapper.identity_key_from_instance(instance)
            if ident in self.identity_map:
                return False
            return not any(type(obj) is type(instance) and state.mapper.identity_key_from_instance(obj) == ident
                           for obj in self.new)

        def _write_merges(self):
            pending = self.__dict__.pop("_mlflow_gcp_merges", None)
            if pending:
                insert_rows(self, *[(*models[model], ordered_rows(rows)) for model, rows in pending.items()])

        def flush(self, objects=None):
            super().flush(objects)
            self._write_merges()

        def _flush_held(self):
            # Held rows may belong to a trace row still pending in this session (foreign key):
            # the flush writes pending objects first, then the held rows.
            if self.__dict__.get("_mlflow_gcp_merges"):
                self.flush()

        def execute(self, *args, **kwargs):
            self._flush_held()
            return super().execute(*args, **kwargs)

        def commit(self):
            self._flush_held()
            super().commit()

        def rollback(self):
            self.__dict__.pop("_mlflow_gcp_merges", None)
            super().rollback()

        def close(self):
            self.__dict__.pop("_mlflow_gcp_merges", None)
            super().close()

    return BatchedMergeSession
