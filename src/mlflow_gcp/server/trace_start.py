"""MLflow's start_trace (`SqlAlchemyStore._start_trace_once`) as a few plain statements on one
transaction, leaving MLflow's rows, answering MLflow's TraceInfo and raising MLflow's errors.

Why: MLflow's client posts a trace's spans (OTLP) before its StartTraceV3, so log_spans has almost
always created the trace and start_trace takes its conflict path: a flush that fails on the key, a
rollback, a locked reread, the ORM payload-generation bump, field updates, a merge per tag,
assessment and metadata row, two ORM UPDATEs, a reread and lazy loads for the answer. py-spy on
our workers (GIL samples) under the replayed ingest: ~30% of their CPU, nearly all SQLAlchemy's
ORM machinery, ~20 round trips. Here, in MLflow's managed scope (its commit, rollback and error
translation), per start_trace after spans:

1. the trace row locked (FOR UPDATE), then, in the same round trip but a statement of its own (so
   with a snapshot taken after the lock, as MLflow's lazy load of the tags is), the experiment's
   row, the trace's tags and MLflow's generation bump (trace_writes.BUMP_GENERATIONS), the bump
   applied only where the first statement locked the row (it says so in a transaction-local
   setting: a row another transaction inserts in between is not this path's);
2. MLflow's field updates on the trace row, the tag, assessment and metadata upserts (the rows
   MLflow's merges leave, key order), the spans' and assessments' experiment updates, and the
   reread for the answer: one round trip.

A trace not found takes MLflow's new-trace path: INSERT .. ON CONFLICT DO NOTHING (a concurrent
log_spans' insert is waited for, as MLflow's INSERT waits), then its tags, sorted metadata and
assessments; an insert that loses (or fails on a constraint, as MLflow's flush would) goes to the
conflict path as MLflow's IntegrityError handler does. The pure parts (name check, analytics
columns, promoted keys, the artifact-location tag, assessment rows, the answer's construction) are
MLflow's own functions. Used only while the sources of the MLflow functions this follows hash as
recorded below; tests/integration/test_trace_ingest_rows.py compares rows, answers and errors.
"""

from __future__ import annotations

from types import SimpleNamespace

from mlflow_gcp.server import copied, trace_writes

# sha256 of MLflow 3.17.2's sources this module follows (it replicates the first three's
# statements and builds its answer through the last ones from plain rows).
COPIED_SOURCES = {
    "SqlAlchemyStore._start_trace_once":
        "fbe64924b95da3bcf2054b7670946321596863ff25b7d2d8540eb4a4b031c6c6",
    "SqlAlchemyStore._is_sql_trace_db_backed":
        "0f09e99527cc2521b0d0515ec47f804921861c6d0394f9fdd1f222672dab1136",
    "SqlAlchemyStore._advance_db_payload_generations_for_db_span_writes":
        "946dbf5716b81b05d4094b0dca00fbe95353bb0b4dee856bd083336cefc5840d",
    "SqlAlchemyStore._get_trace_artifact_location_tag":
        "d57d764ab0a8153bcf0b642419f07123016bb9104c67a05a95c1a448b76bb83e",
    "SqlTraceInfo.to_mlflow_entity":
        "c03da07b9941577ce1713de8c0439fc1eb252196f153e08ae301de31a2902959",
    "SqlAssessments.from_mlflow_entity":
        "7eff0d0a38bdba0ccc74a5428ebaef01f008904a6d3cc1f31c4dc4c5423b57e9",
    "SqlAssessments.to_mlflow_entity":
        "7f48f559dece7a8df95ef69af33422206fa3eaed576b07b28f9d0c2a2b2d005b",
}

# 1: the trace row locked as MLflow's reread is, then the experiment (light_experiment's columns),
# the trace's tags, MLflow's bump where the row was locked, and whether it was (the last column).
_LOCKED = "current_setting('mlflow_gcp.start_trace_locked') = '1'"
EXPERIMENT_AND_TRACE = (
    "SELECT set_config('mlflow_gcp.start_trace_locked', (SELECT count(*) FROM (SELECT 1 FROM trace_info "
    "WHERE request_id = %s FOR UPDATE) AS l)::text, true);\n"
    f"WITH bump AS ({trace_writes.BUMP_GENERATIONS} AND {_LOCKED} RETURNING 1) "
    "SELECT e.name, e.artifact_location, e.lifecycle_stage, e.creation_time, e.last_update_time, "
    "(SELECT json_agg(json_build_array(key, value)) FROM trace_tags WHERE request_id = %s), "
    f"(SELECT count(*) FROM bump), {_LOCKED} "
    "FROM experiments e WHERE e.experiment_id = %s AND e.lifecycle_stage = ANY(%s)")
LOCK_TRACE = "SELECT 1 FROM trace_info WHERE request_id = %s FOR UPDATE"


def sources_match(store_class) -> bool:
    from mlflow.store.tracking.dbmodels.models import SqlAssessments, SqlTraceInfo

    owners = {"SqlAlchemyStore": store_class, "SqlTraceInfo": SqlTraceInfo, "SqlAssessments": SqlAssessments}
    return copied.same((getattr(owners[name.split(".")[0]], name.split(".")[1], None), digest)
                       for name, digest in COPIED_SOURCES.items())


def starter(store_class, execute, insert_rows):
    """`start(store, trace_info) -> TraceInfo`: MLflow's `_start_trace_once` done with plain
    statements where `start.applies(store, trace_info)`; None when MLflow's sources are not the ones
    followed here. `execute` and `insert_rows`: store._execute and store._insert_rows."""
    if not sources_match(store_class):
        return None
    from mlflow.entities import Experiment, LifecycleStage, ViewType
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_STATE, RESOURCE_DOES_NOT_EXIST
    from mlflow.store.db.db_types import POSTGRES
    from mlflow.store.tracking import sqlalchemy_store as ms
    from mlflow.store.tracking.dbmodels.models import (SqlAssessments, SqlSpan, SqlTraceInfo, SqlTraceMetadata,
                                                       SqlTraceTag)
    from mlflow.store.tracking.utils.sql_trace_rollups import rollups_enabled
    from mlflow.tracing.constant import TraceMetadataKey, TraceTagKey
    from sqlalchemy.exc import IntegrityError

    names = ("validate_trace_name", "analytics_columns_from_metadata", "PROMOTED_TRACE_METADATA_KEYS",
             "MLFLOW_ARTIFACT_LOCATION", "_parse_experiment_id")
    if not all(hasattr(ms, name) for name in names):
        return None
    validate_trace_name, analytics_columns_from_metadata, promoted, artifact_key, parse_id = (
        getattr(ms, name) for name in names)
    stages = LifecycleStage.view_type_to_stages(ViewType.ALL)
    trace_columns = [c.name for c in SqlTraceInfo.__table__.columns]
    assessment_columns = [c for c in SqlAssessments.__table__.columns]
    answer_read = (
        f"SELECT {', '.join(trace_columns)}, "
        "(SELECT json_agg(json_build_array(key, value)) FROM trace_tags WHERE request_id = %(trace)s), "
        "(SELECT json_agg(json_build_array(key, value)) FROM trace_request_metadata WHERE request_id = %(trace)s), "
        "(SELECT json_agg(a) FROM assessments a WHERE trace_id = %(trace)s) "
        "FROM trace_info WHERE request_id = %(trace)s")
    tags_and_bump = (f"WITH bump AS ({trace_writes.BUMP_GENERATIONS} RETURNING 1) "
                     "SELECT (SELECT json_agg(json_build_array(key, value)) FROM trace_tags WHERE request_id = %s), "
                     "(SELECT count(*) FROM bump)")

    def applies(store, trace_info) -> bool:
        if store.db_type != POSTGRES or rollups_enabled() or store.supports_workspaces:
            return False
        # What MLflow's single flush would refuse as a whole (then it rereads a trace it rolled
        # back): a tag under the artifact-location key, assessments sharing an id.
        ids = [a.assessment_id for a in trace_info.assessments]
        return artifact_key not in trace_info.tags and (None in ids or len(set(ids)) == len(ids))

    def assessment_rows(trace_info, trace_id):
        """MLflow's SqlAssessments for the trace's assessments (ids and timestamps filled in by
        MLflow's from_mlflow_entity, as its conflict path's second conversion leaves them)."""
        out = []
        for a in trace_info.assessments:
            row = SqlAssessments.from_mlflow_entity(a)
            row.trace_id = trace_id
            row.experiment_id = int(trace_info.experiment_id)
            row.trace_timestamp_ms = trace_info.request_time
            out.append(row)
        return out

    def as_dict(row, columns):
        return {c.name: getattr(row, c.name) for c in columns if c.name in vars(row)}

    def start(store, trace_info):
        trace_name = validate_trace_name(trace_info.tags.get(TraceTagKey.TRACE_NAME))
        trace_id = trace_info.trace_id
        with store.ManagedSessionMaker(read_only=False) as session:
            experiment_id = parse_id(trace_info.experiment_id or store.DEFAULT_EXPERIMENT_ID)
            _, bump_params = trace_writes.bump_generations([trace_id])
            row = execute(session, EXPERIMENT_AND_TRACE,
                          (trace_id, *bump_params, trace_id, experiment_id, stages)).first()
            if row is None:
                raise MlflowException(f"No Experiment with id={experiment_id} exists", RESOURCE_DOES_NOT_EXIST)
            name, artifact_location, stage, created, updated, tags_before, bumped, found = row
            experiment = Experiment(str(experiment_id), name, artifact_location, stage, tags=None,
                                    creation_time=created, last_update_time=updated)
            store._check_experiment_is_active(experiment)

            request_metadata = dict(trace_info.trace_metadata.items())
            analytics = analytics_columns_from_metadata(request_metadata)
            tags = [(k, v) for k, v in trace_info.tags.items() if k != TraceTagKey.TRACE_NAME]
            artifact_tag = store._get_trace_artifact_location_tag(experiment, trace_id)
            tags.append((artifact_tag.key, artifact_tag.value))
            for key in promoted:
                request_metadata.pop(key, None)
            request_metadata[TraceMetadataKey.TRACE_INFO_FINALIZED] = "true"
            metadata = sorted(request_metadata.items())

            if not found:
                fields = {"request_id": trace_id, "experiment_id": trace_info.experiment_id,
                          "timestamp_ms": trace_info.request_time,
                          "execution_time_ms": trace_info.execution_duration, "status": trace_info.state.value,
                          "client_request_id": trace_info.client_request_id,
                          "request_preview": trace_info.request_preview,
                          "response_preview": trace_info.response_preview, "trace_name": trace_name, **analytics}
                assessments = assessment_rows(trace_info, trace_id)
                try:
                    inserted = _insert_new(session, execute, insert_rows, fields, tags, metadata, assessments)
                except IntegrityError:  # MLflow's flush failing: its handler rolls back, goes on below
                    inserted = False
                    session.rollback()
                if inserted:
                    return _answer(SqlTraceInfo, trace_columns, fields, tags, metadata, assessments)
                if execute(session, LOCK_TRACE, (trace_id,)).first() is None:
                    raise MlflowException(f"Trace with ID '{trace_id}' no longer exists.",
                                          error_code=RESOURCE_DOES_NOT_EXIST)
                tags_before, bumped = execute(session, tags_and_bump, (*bump_params, trace_id)).first()

            # MLflow's conflict path on the locked row. The trace's tags as MLflow's db-backed
            # check loads them (after the lock); that collection, loaded, is also the one MLflow's
            # answer shows: these keys, with the values its merges leave (tags new to the trace are
            # merged in but not in its answer).
            tags_before = [SimpleNamespace(key=k, value=v) for k, v in tags_before or []]
            if not store._is_sql_trace_db_backed(SimpleNamespace(tags=tags_before)):
                raise MlflowException(f"Cannot update traces that are no longer DB-backed: '{trace_id}'.",
                                      error_code=INVALID_STATE)
            if bumped != 1:  # MLflow's bump: its readers and its error
                store._advance_db_payload_generations_for_db_span_writes(session, [trace_id])

            updates = {"experiment_id": trace_info.experiment_id, "timestamp_ms": trace_info.request_time,
                       "execution_time_ms": trace_info.execution_duration, "status": trace_info.state.value,
                       "client_request_id": trace_info.client_request_id}
            if TraceTagKey.TRACE_NAME in trace_info.tags:
                updates["trace_name"] = trace_name
            updates.update(analytics)
            for column in ("request_preview", "response_preview"):
                if getattr(trace_info, column) is not None:
                    updates[column] = getattr(trace_info, column)
            experiment_int = int(trace_info.experiment_id)
            before = [(f"UPDATE trace_info SET {', '.join(f'{c} = %s' for c in updates)} WHERE request_id = %s",
                       (*updates.values(), trace_id))]
            after = [(f"UPDATE {SqlSpan.__tablename__} SET experiment_id = %s WHERE trace_id = %s",
                      (experiment_int, trace_id)),
                     (f"UPDATE {SqlAssessments.__tablename__} SET experiment_id = %s, trace_timestamp_ms = %s "
                      "WHERE trace_id = %s", (experiment_int, trace_info.request_time, trace_id)),
                     (answer_read, {"trace": trace_id})]
            # Last write wins per key, as a second merge of a key does; rows in key order.
            inserts = [*trace_writes.upsert_statements(SqlTraceTag.__table__, _keyed(trace_id, dict(tags))),
                       *trace_writes.upsert_statements(SqlTraceMetadata.__table__, _keyed(trace_id, dict(metadata)))]
            assessments = assessment_rows(trace_info, trace_id)
            if assessments:
                inserts[1:1] = trace_writes.upsert_statements(
                    SqlAssessments.__table__, [as_dict(a, assessment_columns) for a in assessments])
            row = insert_rows(session, *inserts, before=before, after=after).first()
            values = dict(zip(trace_columns, row))
            shown = {tag.key for tag in tags_before}
            return _answer(SqlTraceInfo, trace_columns, values, [(k, v) for k, v in row[-3] or [] if k in shown],
                           row[-2] or [],
                           [_assessment(SqlAssessments, a) for a in row[-1] or []])

    def _insert_new(session, execute, insert_rows, fields, tags, metadata, assessments) -> bool:
        written = {k: v for k, v in fields.items() if v is not None}
        head = f"INSERT INTO trace_info ({', '.join(written)}) VALUES ({', '.join(['%s'] * len(written))})"
        if execute(session, f"{head} ON CONFLICT (request_id) DO NOTHING RETURNING 1",
                   tuple(written.values())).first() is None:
            return False
        trace_id = fields["request_id"]
        inserts = [*_plain_inserts(SqlTraceTag.__table__, _keyed(trace_id, tags, sort=False)),
                   *_plain_inserts(SqlTraceMetadata.__table__, _keyed(trace_id, metadata, sort=False))]
        if assessments:
            # from_mlflow_entity sets every column, those with defaults to values (never None)
            inserts += _plain_inserts(SqlAssessments.__table__, [as_dict(a, assessment_columns) for a in assessments])
        insert_rows(session, *inserts)
        return True

    start.applies = applies
    return start


def _keyed(trace_id, pairs, sort=True):
    items = sorted(pairs.items()) if sort else list(pairs)
    return [{"request_id": trace_id, "key": k, "value": v} for k, v in items]


def _plain_inserts(table, rows):
    """MLflow's flush INSERTs (no ON CONFLICT), VALUES rendered as store._insert_rows renders."""
    from mlflow_gcp.server import trace_writes

    return [(head, "", batch) for head, _, batch in trace_writes.upsert_statements(table, rows)]


def _assessment(model, values: dict):
    row = SimpleNamespace(**values)
    row.to_mlflow_entity = lambda: model.to_mlflow_entity(row)
    return row


def _answer(trace_model, columns, values, tags, metadata, assessments):
    """MLflow's `SqlTraceInfo.to_mlflow_entity` on the rows written / read back."""
    row = SimpleNamespace(**{**dict.fromkeys(columns), **{k: v for k, v in values.items() if k in columns}})
    row.tags = [SimpleNamespace(key=k, value=v) for k, v in tags]
    row.request_metadata = [SimpleNamespace(key=k, value=v) for k, v in metadata]
    row.assessments = assessments
    return trace_model.to_mlflow_entity(row)
