"""batch_get_traces' reads as two plain queries: the same TraceInfo and span snapshots MLflow's
store builds, without its ORM.

Why: MLflow's client's `search_traces(max_results=100)` is ten batch-gets of 10 traces. In each,
MLflow's store loads trace_info, then its tags, request metadata and assessments (selectinload:
four statements) as ~15 ORM objects per trace, then the spans, and builds the entities; the ORM
objects' state alone was about a third of the store's CPU per batch-get. Here one statement reads
each trace's row with its tags and metadata as arrays (and whether it has assessments), one more
its spans' stored content; the TraceInfo is built as `SqlTraceInfo.to_mlflow_entity` builds it,
and MLflow's own `_get_spans_with_trace_info` sorts, checks and wraps the spans.

Only the usual case is read here: every trace's spans in the tracking store, none with
assessments, no span payload cleared by archival. Anything else (or an MLflow whose pieces are not
the expected ones) returns None and MLflow's own batch_get_traces answers, errors included.
tests/integration/test_differential.py compares the answers with stock MLflow's.
"""

from __future__ import annotations

# MLflow 3.17.2's trace_info columns that SqlTraceInfo.to_mlflow_entity reads, by name (the token
# and cost columns are added from MLflow's own tables of them at setup).
_INFO_COLUMNS = ("request_id", "experiment_id", "timestamp_ms", "execution_time_ms", "status",
                 "client_request_id", "request_preview", "response_preview", "trace_name", "session_id")


def _info_query(columns: tuple[str, ...], scoped: bool) -> str:
    picked = ", ".join(f"ti.{name}" for name in columns)
    scope = " AND ti.experiment_id = ANY(%(experiments)s)" if scoped else ""
    return (f"SELECT {picked}, "
            "ARRAY(SELECT ARRAY[t.key, t.value] FROM trace_tags t WHERE t.request_id = ti.request_id), "
            "ARRAY(SELECT ARRAY[m.key, m.value] FROM trace_request_metadata m WHERE m.request_id = ti.request_id), "
            "EXISTS (SELECT FROM assessments a WHERE a.trace_id = ti.request_id) "
            f"FROM trace_info ti WHERE ti.request_id = ANY(%(ids)s){scope}")


SPANS = ("SELECT trace_id, content, parent_span_id, start_time_unix_nano FROM spans "
         "WHERE trace_id = ANY(%s)")


def reader(execute):
    """A `read(session, trace_ids, experiment_ids)` giving [(TraceInfo, span snapshots)] in
    MLflow's order, or None for MLflow's own path; None (nothing to use) when MLflow's pieces
    are not the ones this was written for. `execute(session, sql, params)` is store._execute."""
    try:
        from mlflow.entities import TraceInfo, TraceLocation, TraceState
        from mlflow.store.tracking.dbmodels.models import SqlAssessments, SqlSpan, SqlTraceInfo, SqlTraceMetadata, SqlTraceTag
        from mlflow.store.tracking.utils.trace_analytics import (
            COST_COLUMN_BY_KEY, PROMOTED_TRACE_METADATA_KEYS, TOKEN_COLUMN_BY_KEY, compatibility_metadata_from_columns)
        from mlflow.store.tracking.utils.trace_archival import _TraceSpanSnapshot
        from mlflow.tracing.constant import SpansLocation, TraceTagKey
        from mlflow.utils.validation import _parse_experiment_ids
    except ImportError:
        return None
    columns = _INFO_COLUMNS + tuple(TOKEN_COLUMN_BY_KEY.values()) + tuple(COST_COLUMN_BY_KEY.values())
    tables = (SqlTraceInfo.__tablename__, SqlTraceTag.__tablename__, SqlTraceMetadata.__tablename__,
              SqlAssessments.__tablename__, SqlSpan.__tablename__)
    if (tables != ("trace_info", "trace_tags", "trace_request_metadata", "assessments", "spans")
            or not set(columns) <= set(SqlTraceInfo.__table__.columns.keys())):
        return None
    queries = {False: _info_query(columns, False), True: _info_query(columns, True)}
    in_store, location_key, name_key = SpansLocation.TRACKING_STORE.value, TraceTagKey.SPANS_LOCATION, TraceTagKey.TRACE_NAME

    class Row:
        """A trace_info row by column name, as compatibility_metadata_from_columns reads it."""

        __slots__ = columns

        def __init__(self, values):
            for name, value in zip(columns, values):
                setattr(self, name, value)

    def trace_info(values) -> TraceInfo | None:
        row = Row(values)
        tags = {key: value for key, value in values[-3] if key != name_key}
        if row.trace_name is not None:
            tags[name_key] = row.trace_name
        if tags.get(location_key) != in_store:
            return None  # archived, in the artifact store, or unknown: MLflow's path
        metadata = {key: value for key, value in values[-2] if key not in PROMOTED_TRACE_METADATA_KEYS}
        metadata.update(compatibility_metadata_from_columns(row))
        return TraceInfo(
            trace_id=row.request_id,
            trace_location=TraceLocation.from_experiment_id(str(row.experiment_id)),
            request_time=row.timestamp_ms,
            execution_duration=row.execution_time_ms,
            state=TraceState(row.status),
            tags=tags,
            trace_metadata=metadata,
            client_request_id=row.client_request_id,
            request_preview=row.request_preview,
            response_preview=row.response_preview,
            assessments=[],
        )

    def read(session, trace_ids, experiment_ids):
        order = {trace_id: n for n, trace_id in enumerate(trace_ids)}
        params = {"ids": list(order)}
        if experiment_ids is not None:
            params["experiments"] = list(dict.fromkeys(_parse_experiment_ids(experiment_ids)))
        result = execute(session, queries[experiment_ids is not None], params)
        rows = result.cursor.fetchall()
        result.close()
        infos = []
        for values in rows:
            if values[-1]:  # assessments: MLflow builds their entities
                return None
            info = trace_info(values)
            if info is None:
                return None
            infos.append(info)
        infos.sort(key=lambda info: order[info.trace_id])
        spans = {info.trace_id: [] for info in infos}
        if spans:
            result = execute(session, SPANS, (list(spans),))
            for trace_id, content, parent_span_id, start in result.cursor.fetchall():
                if content == "":
                    return None  # cleared by archival meanwhile: MLflow rereads the trace
                spans[trace_id].append(_TraceSpanSnapshot(content=content, parent_span_id=parent_span_id,
                                                          start_time_unix_nano=start))
            result.close()
        return [(info, spans[info.trace_id]) for info in infos]

    return read
