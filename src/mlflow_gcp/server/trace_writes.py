"""Three pieces of MLflow's trace ingest (log_spans, start_trace) done with less CPU, leaving the same
rows and raising the same errors.

Why: under the bench's trace ingest (MLflow's client: each 8-span trace is ~2 OTLP posts and one
StartTraceV3), py-spy on our worker in GIL mode (CPU, not waiting) showed two pieces at a third of
the worker's Python time:

- log_spans' span upsert (MLflow's `_bulk_upsert`): SQLAlchemy compiles a multi-row
  `insert(spans).values(rows).on_conflict_do_update(..)` anew for every post, 15 bind parameters
  per span (~17% of the worker's CPU). Here the same statement, the same columns, the same
  ON CONFLICT, the same batches of 100 rows in the same order, with the VALUES rendered by psycopg2
  (store._insert_rows), which sends SQLAlchemy's bind values to PostgreSQL as the same literals.
- The experiment both calls read (`get_experiment`, ~18%): MLflow loads it with its tags in its
  own session (two queries, ORM objects) and only reads its lifecycle stage (start_trace's active
  check) and artifact location (the trace's artifact-location tag). Here one plain query of the
  experiment's row, MLflow's own error when there is none, and an Experiment without tags.
- The payload generation bump both calls make (`_advance_db_payload_generations_for_db_span_writes`,
  below: BUMP_GENERATIONS), an ORM UPDATE with a correlated EXISTS built per call: one plain
  statement; when a trace was not bumped, MLflow's own readers and its error.

All three apply only while our store runs MLflow's log_spans / start_trace (`in_trace_write`);
everything else, and MLflow's store in the same process, keeps MLflow's code.
tests/integration/test_trace_ingest_rows.py compares every trace table's rows with MLflow's store.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

# MLflow's _bulk_upsert batch size: the same statements in the same order (lock order included).
BATCH = 100
_WRITING = threading.local()


@contextmanager
def _marked(flag: threading.local):
    previous = getattr(flag, "on", False)
    flag.on = True
    try:
        yield
    finally:
        flag.on = previous


def in_trace_write():
    """Marks this thread as running our store's log_spans / start_trace."""
    return _marked(_WRITING)


def writing() -> bool:
    return getattr(_WRITING, "on", False)


def upsert_statements(table, rows: list[dict]) -> list[tuple[str, str, list[tuple]]]:
    """(head, tail, rows as tuples) per batch: MLflow's _bulk_upsert for PostgreSQL (columns of the
    table given in every row, in table order; ON CONFLICT on the primary key updating every other
    given column that is not computed; nothing updated: DO NOTHING)."""
    pk = [c.name for c in table.primary_key.columns]
    given = set.intersection(*(set(row) for row in rows))
    columns = [c.name for c in table.columns if c.name in given]
    update = [c.name for c in table.columns if c.name not in pk and not c.computed and c.name in given]
    head = f'INSERT INTO {table.name} ({", ".join(_quote(c) for c in columns)})'
    conflict = f'ON CONFLICT ({", ".join(_quote(c) for c in pk)})'
    if update:
        tail = f'{conflict} DO UPDATE SET {", ".join(f"{_quote(c)} = EXCLUDED.{_quote(c)}" for c in update)}'
    else:
        tail = f"{conflict} DO NOTHING"
    return [(head, tail, [tuple(row[c] for c in columns) for row in rows[i:i + BATCH]])
            for i in range(0, len(rows), BATCH)]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


EXPERIMENT_ROW = ("SELECT name, artifact_location, lifecycle_stage, creation_time, last_update_time "
                  "FROM experiments WHERE experiment_id = %s AND lifecycle_stage = ANY(%s)")


# MLflow's _advance_db_payload_generations_for_db_span_writes: bump each trace's payload generation
# unless its spans live outside the tracking store (the writer's guard against archival). The ORM
# UPDATE with its EXISTS is built and compiled anew per call (~4% of the worker's CPU under the
# bench's trace ingest: once per log_spans, once per start_trace that finds its trace).
BUMP_GENERATIONS = (
    "UPDATE trace_info SET db_payload_generation = trace_info.db_payload_generation + 1 "
    "WHERE trace_info.request_id = ANY(%s) AND NOT (EXISTS (SELECT 1 FROM trace_tags "
    "WHERE trace_tags.request_id = trace_info.request_id AND trace_tags.key = %s AND trace_tags.value != %s))")


def bump_generations(trace_ids: list[str]) -> tuple[str, tuple]:
    from mlflow.tracing.constant import SpansLocation, TraceTagKey

    return BUMP_GENERATIONS, (trace_ids, TraceTagKey.SPANS_LOCATION, SpansLocation.TRACKING_STORE.value)


# start_trace's first flush inserts the trace row with its tags and metadata through SQLAlchemy's
# unit of work. MLflow's client posts a trace's spans before its StartTraceV3 (log_spans creates the
# trace), so that INSERT almost always fails on the primary key and MLflow takes its IntegrityError
# path (rollback, then a merge into the row). py-spy on our worker in GIL mode under the replayed
# ingest load: that doomed flush was ~8% of the worker's Python time (the unit of work for ~17
# objects, the failed INSERT, SQLAlchemy's error handling). Here a trace row other transactions have
# committed is found by one plain SELECT first and the flush raises the IntegrityError the INSERT
# would raise, sending nothing else; a row not found (StartTraceV3 first, or a log_spans not yet
# committed, whose INSERT waits on the key as MLflow's does) goes to MLflow's flush unchanged.
TRACE_EXISTS = "SELECT 1 FROM trace_info WHERE request_id = %s"
_STARTING = threading.local()


def in_start_trace():
    """Marks this thread as running our store's start_trace (inside in_trace_write)."""
    return _marked(_STARTING)


def starting_session(base, execute):
    """`base` (a Session class) whose flush, while start_trace runs on PostgreSQL with one new trace
    row pending, raises the IntegrityError of its INSERT without flushing when the row exists."""
    from sqlalchemy.exc import IntegrityError

    from mlflow.store.tracking.dbmodels.models import SqlTraceInfo

    class StartingSession(base):
        def flush(self, objects=None):
            if objects is None and getattr(_STARTING, "on", False) and self.bind.dialect.name == "postgresql":
                rows = [obj for obj in self.new if type(obj) is SqlTraceInfo]
                if len(rows) == 1 and rows[0].request_id is not None:
                    params = (rows[0].request_id,)
                    if execute(self, TRACE_EXISTS, params).first() is not None:
                        raise IntegrityError(TRACE_EXISTS, params, Exception(
                            f"trace_info row {rows[0].request_id!r} exists (duplicate key trace_info_pk)"))
            super().flush(objects)

    return StartingSession
