"""MLflow's SqlAlchemyStore._log_spans_once with its database phases as a few plain statements on
one connection, leaving the same rows and raising the same errors.

Why: under the replayed trace ingest (MLflow's client: two OTLP posts per 8-span trace, then
StartTraceV3), py-spy on our workers in GIL mode had MLflow's _log_spans_once at 40% of their CPU,
nearly all of it SQLAlchemy's ORM (Session.execute, flush, Query.update, lazy loads, cache keys)
rather than the span conversion. Here MLflow's pure-Python pre-compute runs as MLflow wrote it
(copied: it is inline in _log_spans_once) and the database work is, in MLflow's managed session
(its commit, rollback and translation of errors):

1. the batch's trace rows read and locked (FOR UPDATE, request_id order: MLflow's phase 1);
2. missing traces: the experiment read (MLflow's error when there is none), then one INSERT ..
   ON CONFLICT DO NOTHING RETURNING of the trace rows with their artifact-location tags; a row
   another transaction created meanwhile is then locked and read. That is the end state of
   MLflow's rollback-and-retry loop, and only rows this call inserted count as created, as there.
   Every row is now locked from step 1 on, so MLflow's second lock of the pre-existing rows
   (_trace_row_lock_query) has nothing left to wait for and is not sent;
3. the span upsert (MLflow's _bulk_upsert statement, trace_writes.upsert_statements), and in the
   same round trip, as the last statement, the finalization markers and the stored spans MLflow
   reads next (one snapshot: the rows are locked, no other writer of these traces can commit);
4. per trace MLflow's UPDATE (the same CASE expressions), the assessments' trace_timestamp_ms,
   the user-id metadata when there is none, then the payload generation bump (MLflow's readers and
   error when fewer rows), all in one round trip with:
5. in the bump's statement, the tag upserts (spans location, resource attributes, root-span trace
   tags), the last write of a key winning as MLflow's merges do.

Used only on PostgreSQL, without rollups or workspaces, and while the source of every MLflow method
this follows is the one copied (sha256); otherwise MLflow's own _log_spans_once runs.
tests/integration/test_trace_ingest_rows.py compares every trace table's rows with MLflow's store.
"""

from __future__ import annotations

import json
from collections import defaultdict
from types import SimpleNamespace

from mlflow_gcp.server import copied

# sha256 of MLflow 3.17.2's sources this module follows (copies or replaces).
COPIED = {
    "_log_spans_once": "6abc5a23ddf61e7e8917145de836b7bd2a6edcaf90fd560fb322b451fee228db",
    "_update_trace_info_attributes": "a5ee16cac0cba879f42f8cb8523a814af3969c0d9fc2a68692acbb85b83c4b1e",
    "_get_trace_status_from_root_span": "2434ff92712c90934cd445eb03c16f3ee63a063eab81c88b43f554c0829bf52d",
    "_advance_db_payload_generations_for_db_span_writes":
        "946dbf5716b81b05d4094b0dca00fbe95353bb0b4dee856bd083336cefc5840d",
    "_trace_row_lock_query": "45cae2415b51c15abde8212cadb4c283a7426bf4afbcf3f8cad9560b85b01880",
    "_stored_span_rows_query": "2b424f96c4eb9d9107e53084906e79dcfd14eceb87dda21df9a6d43cadfb9307",
    "_get_trace_artifact_location_tag": "d57d764ab0a8153bcf0b642419f07123016bb9104c67a05a95c1a448b76bb83e",
}
_NAMES = ("COST_COLUMN_BY_KEY", "MSSQL", "SpanAttributeKey", "GenAiSemconvKey", "SpansLocation", "TOKEN_COLUMN_BY_KEY",
          "TraceJSONEncoder", "TraceMetadataKey", "TraceState", "TraceTagKey", "_LOG_SPANS_MAX_TRACE_CREATE_RETRIES",
          "_TraceAggregate", "_logger", "_span_aggregation_node", "_try_parse_json_string", "_validate_trace_tag",
          "aggregate_cost_from_span_nodes", "aggregate_usage_from_span_nodes", "bounded_model_dimension",
          "finite_float_or_none", "rollups_enabled", "token_count_or_none", "translate_span_when_storing",
          "validate_session_id", "validate_trace_name")


def copied_matches(store_class) -> bool:
    return copied.same((getattr(store_class, name, None), digest) for name, digest in COPIED.items())


def writer(store_class, execute, insert_rows, experiment_in):
    """`log_spans_once(store, location, spans)` doing what MLflow's `_log_spans_once` does, or None
    (then MLflow's own runs) when it does not apply to this call: not PostgreSQL, rollups or
    workspaces on. The whole writer is None when MLflow's sources are not the ones followed here.
    `execute(session, sql, params)` runs statements (psycopg2 renders the parameters);
    `insert_rows` is store._insert_rows (the span upsert's VALUES, rendered as every bulk write's);
    `experiment_in(session, location)` is get_experiment's answer (or error) read on `session`."""
    if not copied_matches(store_class):
        return None
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
    from mlflow.store.tracking import sqlalchemy_store as mlflow_store
    from mlflow.store.tracking.dbmodels.models import (SqlAssessments, SqlSpan, SqlTraceInfo, SqlTraceMetadata,
                                                       SqlTraceTag)

    from mlflow_gcp.server import trace_merges, trace_writes

    found = vars(mlflow_store)
    if not all(name in found for name in _NAMES):
        return None
    ns = SimpleNamespace(**{name: found[name] for name in _NAMES})
    tables = (SqlTraceInfo.__tablename__, SqlTraceTag.__tablename__, SqlTraceMetadata.__tablename__,
              SqlAssessments.__tablename__, SqlSpan.__tablename__)
    if tables != ("trace_info", "trace_tags", "trace_request_metadata", "assessments", "spans"):
        return None
    token_columns = list(ns.TOKEN_COLUMN_BY_KEY.values())
    cost_columns = list(ns.COST_COLUMN_BY_KEY.values())
    if not set(token_columns + cost_columns) <= set(SqlTraceInfo.__table__.columns.keys()):
        return None
    read_columns = ["request_id", "experiment_id", "timestamp_ms", "status", "request_preview",
                    "response_preview", "session_id", *token_columns, *cost_columns]
    lock_traces = (f"SELECT {', '.join(read_columns)} FROM trace_info WHERE request_id = ANY(%s) "
                   "ORDER BY request_id FOR UPDATE")
    tag_head, tag_tail = trace_merges.upsert_statement("trace_tags")
    metadata_head, metadata_tail = trace_merges.upsert_statement("trace_request_metadata")
    finalized_key = ns.TraceMetadataKey.TRACE_INFO_FINALIZED
    # finalization markers (span_id NULL) and the stored spans MLflow recomputes usage and cost from
    markers_and_spans = (
        'SELECT request_id, NULL AS span_id, NULL AS parent_span_id, NULL AS content FROM trace_request_metadata '
        'WHERE request_id = ANY(%s) AND "key" = %s '
        "UNION ALL SELECT trace_id, span_id, parent_span_id, content FROM spans "
        "WHERE trace_id = ANY(%s) AND content != ''")

    def applies(store) -> bool:
        return (store.db_type == "postgresql" and not ns.rollups_enabled()
                and not MLFLOW_ENABLE_WORKSPACES.get())

    def insert_traces(session, store, experiment, location, pending, aggregates) -> set[str]:
        """Inserts the rows of `pending` no other transaction has; the ids inserted."""
        values, params = [], []
        tag_values, tag_params = [], []
        for trace_id in pending:
            agg = aggregates[trace_id]
            values.append("(%s, %s, %s, %s, %s, %s)")
            params += [trace_id, location, agg.min_start_ms,
                       (agg.max_end_ms - agg.min_start_ms) if agg.max_end_ms else None, agg.trace_status, None]
            tag = store._get_trace_artifact_location_tag(experiment, trace_id)
            tag_values.append("(%s, %s, %s)")
            tag_params += [tag.request_id, tag.key, tag.value]
        sql = ("WITH created AS (INSERT INTO trace_info (request_id, experiment_id, timestamp_ms, "
               f"execution_time_ms, status, client_request_id) VALUES {', '.join(values)} "
               "ON CONFLICT (request_id) DO NOTHING RETURNING request_id), "
               'tags AS (INSERT INTO trace_tags (request_id, "key", "value") SELECT v.r, v.k, v.v FROM '
               f"(VALUES {', '.join(tag_values)}) AS v (r, k, v) WHERE v.r IN (SELECT request_id FROM created)) "
               "SELECT request_id FROM created")
        return {row[0] for row in execute(session, sql, tuple(params + tag_params)).fetchall()}

    def log_spans_once(store, location, spans):
        if not spans:
            return []
        spans_by_trace = defaultdict(list)
        for span in spans:
            spans_by_trace[span.trace_id].append(span)
        all_trace_ids = list(spans_by_trace.keys())
        trace_aggregates, all_span_rows = _aggregates(store, ns, spans_by_trace)
        batch_span_keys = {(row["trace_id"], row["span_id"]) for row in all_span_rows}

        with store.ManagedSessionMaker(read_only=False) as session:
            existing = {row.request_id: row for row in execute(session, lock_traces, (all_trace_ids,)).fetchall()}
            created: set[str] = set()
            if any(tid not in existing for tid in all_trace_ids):
                experiment = experiment_in(session, location or store.DEFAULT_EXPERIMENT_ID)
                for _attempt in range(ns._LOG_SPANS_MAX_TRACE_CREATE_RETRIES):
                    pending = [tid for tid in all_trace_ids if tid not in existing]
                    if not pending:
                        break
                    inserted = insert_traces(session, store, experiment, location, pending, trace_aggregates)
                    for trace_id in inserted:
                        agg = trace_aggregates[trace_id]
                        existing[trace_id] = SimpleNamespace(
                            request_id=trace_id, experiment_id=location, timestamp_ms=agg.min_start_ms,
                            status=agg.trace_status, request_preview=None, response_preview=None, session_id=None,
                            **dict.fromkeys(token_columns + cost_columns))
                    created |= inserted
                    if others := sorted(set(pending) - inserted):  # created by another transaction
                        existing.update((row.request_id, row) for row in
                                        execute(session, lock_traces, (others,)).fetchall())

            if missing_trace_ids := {tid for tid in all_trace_ids if tid not in existing}:
                ns._logger.warning(
                    "Could not create trace_info for %d trace(s) after %d retries; "
                    "spans for these traces will be dropped: %s",
                    len(missing_trace_ids), ns._LOG_SPANS_MAX_TRACE_CREATE_RETRIES, missing_trace_ids)
                all_span_rows = [r for r in all_span_rows if r["trace_id"] not in missing_trace_ids]
            all_trace_ids = [trace_id for trace_id in all_trace_ids if trace_id in existing]
            preexisting = {trace_id for trace_id in all_trace_ids if trace_id not in created}
            for row in all_span_rows:
                row["experiment_id"] = existing[row["trace_id"]].experiment_id

            with_usage = {tid for tid in all_trace_ids if trace_aggregates[tid].aggregated_token_usage}
            with_cost = {tid for tid in all_trace_ids if trace_aggregates[tid].aggregated_cost}
            with_session = {tid for tid in all_trace_ids if trace_aggregates[tid].session_id}
            marked = sorted(with_usage | with_cost | with_session)
            stored_of = sorted((with_usage | with_cost) & preexisting)
            upserts = trace_writes.upsert_statements(SqlSpan.__table__, all_span_rows) if all_span_rows else []
            after = [(markers_and_spans, (marked, finalized_key, stored_of))] if marked else []
            read = []
            if upserts or after:
                result = insert_rows(session, *upserts, after=after)
                read = result.fetchall() if marked else []

            finalized = {row[0] for row in read if row[1] is None}
            authoritative_usage = {tid for tid in with_usage & finalized
                                   if any(getattr(existing[tid], c) is not None for c in token_columns)}
            authoritative_cost = {tid for tid in with_cost & finalized
                                  if any(getattr(existing[tid], c) is not None for c in cost_columns)}
            recompute_usage = (with_usage & preexisting) - authoritative_usage
            recompute_cost = (with_cost & preexisting) - authoritative_cost
            stored_usage_nodes = defaultdict(list)
            stored_cost_nodes = defaultdict(list)
            for row_trace_id, row_span_id, row_parent_span_id, row_content in read:
                if row_span_id is None or row_trace_id not in (recompute_usage | recompute_cost):
                    continue
                if (row_trace_id, row_span_id) in batch_span_keys:
                    continue
                try:
                    row_attributes = json.loads(row_content).get("attributes") or {}
                except (json.JSONDecodeError, AttributeError):
                    ns._logger.debug("Skipping malformed span content for span %s", row_span_id)
                    continue
                if row_trace_id in recompute_usage:
                    stored_usage_nodes[row_trace_id].append(ns._span_aggregation_node(
                        row_span_id, row_parent_span_id, row_attributes, ns.SpanAttributeKey.CHAT_USAGE))
                if row_trace_id in recompute_cost:
                    stored_cost_nodes[row_trace_id].append(ns._span_aggregation_node(
                        row_span_id, row_parent_span_id, row_attributes, ns.SpanAttributeKey.LLM_COST))

            parts = []
            for trace_id in sorted(all_trace_ids):
                agg = trace_aggregates[trace_id]
                row = existing[trace_id]
                if agg.user_id:
                    # MLflow's merge when the trace has no user id yet
                    parts.append((f"{metadata_head} SELECT %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM "
                                  'trace_request_metadata WHERE request_id = %s AND "key" = %s) '
                                  f"{metadata_tail}",
                                  (trace_id, ns.TraceMetadataKey.TRACE_USER, agg.user_id,
                                   trace_id, ns.TraceMetadataKey.TRACE_USER)))
                sets, params = _trace_update(store, ns, agg, row, trace_id in finalized, trace_id in created,
                                             trace_id in authoritative_usage, trace_id in authoritative_cost,
                                             stored_usage_nodes[trace_id], stored_cost_nodes[trace_id])
                if sets:
                    parts.append((f"UPDATE trace_info SET {', '.join(sets)} WHERE trace_info.request_id = %s",
                                   (*params, trace_id)))
                if trace_id not in finalized and row.timestamp_ms > agg.min_start_ms:
                    parts.append(("UPDATE assessments SET trace_timestamp_ms = %s WHERE assessments.trace_id = %s",
                                  (agg.min_start_ms, trace_id)))
            ids = list(dict.fromkeys(all_trace_ids))
            if ids:
                # The bump, then the tags only when every trace was bumped (one statement: the
                # bump's look at the spans-location tag sees the tags from before this upsert;
                # when a trace is not bumped, nothing is upserted and MLflow's readers see them).
                bump, bump_params = trace_writes.bump_generations(ids)
                rows = trace_merges.ordered_rows(_trace_tags(ns, all_trace_ids, spans_by_trace, trace_aggregates))
                parts.append((f"WITH bumped AS ({bump} RETURNING 1), tagged AS ({tag_head} SELECT * FROM (VALUES "
                              f"{', '.join(['(%s, %s, %s)'] * len(rows))}) AS v WHERE (SELECT count(*) FROM bumped) "
                              f"= %s {tag_tail}) SELECT count(*) FROM bumped",
                              (*bump_params, *(v for row in rows for v in row), len(ids))))
                if _run(execute, session, parts).scalar() != len(ids):
                    existing_ids = store._get_existing_trace_ids(session, ids)
                    store._raise_log_spans_trace_write_conflict_error(
                        blocked_trace_ids=store._get_trace_ids_outside_tracking_store(session, ids),
                        missing_trace_ids=[trace_id for trace_id in ids if trace_id not in existing_ids])
        return spans

    log_spans_once.applies = applies
    log_spans_once.ns = ns  # MLflow's names it uses (tests switch rollups_enabled here)
    return log_spans_once


def _run(execute, session, parts):
    """`parts` ((sql, params) each) in one round trip; the last statement's result."""
    return execute(session, ";\n".join(sql for sql, _ in parts), tuple(p for _, params in parts for p in params))


def _trace_update(store, ns, agg, row, finalized, created, authoritative_usage, authoritative_cost,
                  stored_usage_nodes, stored_cost_nodes):
    """(SET clauses, their parameters) of MLflow's phase-5 UPDATE of one trace row."""
    sets, params = [], []
    timestamp = "CASE WHEN (trace_info.timestamp_ms > %s) THEN %s ELSE trace_info.timestamp_ms END"
    if not finalized:
        sets.append(f"timestamp_ms={timestamp}")
        params += [agg.min_start_ms, agg.min_start_ms]
        if agg.max_end_ms is not None:
            end = "trace_info.timestamp_ms + trace_info.execution_time_ms"
            sets.append(f"execution_time_ms=(CASE WHEN ({end} > %s) THEN {end} ELSE %s END - {timestamp})")
            params += [agg.max_end_ms, agg.max_end_ms, agg.min_start_ms, agg.min_start_ms]
    values = {}
    if row.status in (ns.TraceState.IN_PROGRESS.value, ns.TraceState.STATE_UNSPECIFIED.value):
        if agg.root_span_status:
            values["status"] = agg.root_span_status
    if agg.root_span_dict:
        values.update((column.key, value) for column, value in
                      store._update_trace_info_attributes(row, agg.root_span_dict).items())
    if ns.TraceTagKey.TRACE_NAME in agg.trace_tags:
        values["trace_name"] = agg.trace_tags[ns.TraceTagKey.TRACE_NAME]
    if agg.aggregated_token_usage and not authoritative_usage:
        usage = (agg.aggregated_token_usage if created
                 else ns.aggregate_usage_from_span_nodes(agg.usage_nodes + stored_usage_nodes))
        if usage:
            for key, column in ns.TOKEN_COLUMN_BY_KEY.items():
                if (value := ns.token_count_or_none(usage.get(key))) is not None:
                    values[column] = value
    if agg.aggregated_cost and not authoritative_cost:
        cost = (agg.aggregated_cost if created
                else ns.aggregate_cost_from_span_nodes(agg.cost_nodes + stored_cost_nodes))
        if cost:
            for key, column in ns.COST_COLUMN_BY_KEY.items():
                if (value := ns.finite_float_or_none(cost.get(key))) is not None:
                    values[column] = value
    if agg.session_id and row.session_id is None:
        values["session_id"] = agg.session_id
    for column, value in values.items():
        sets.append(f"{column}=%s")
        params.append(value)
    return sets, params


def _trace_tags(ns, trace_ids, spans_by_trace, aggregates) -> dict:
    """{(request_id, key): value} of MLflow's tag merges after the bump, in its order (the last
    write of a key wins, as the last merge does)."""
    tags = {}
    for trace_id in trace_ids:
        agg = aggregates[trace_id]
        tags[(trace_id, ns.TraceTagKey.SPANS_LOCATION)] = ns.SpansLocation.TRACKING_STORE.value
        resource = next((r for span in spans_by_trace[trace_id]
                         if (r := getattr(span._span, "resource", None)) is not None and r.attributes), None)
        if resource is not None:
            for key, value in resource.attributes.items():
                if key.startswith(("telemetry.sdk.", "mlflow.")):
                    continue
                str_value = value if isinstance(value, str) else json.dumps(value)
                try:
                    key, str_value = ns._validate_trace_tag(key, str_value)
                except Exception:
                    ns._logger.debug("Skipping invalid resource attribute %r", key)
                    continue
                tags[(trace_id, key)] = str_value
        for tag_key, tag_value in agg.trace_tags.items():
            if tag_key != ns.TraceTagKey.TRACE_NAME:
                tags[(trace_id, tag_key)] = tag_value
    return tags


def _aggregates(self, ns, spans_by_trace):
    """MLflow's pre-compute of _log_spans_once (copied as is, inline there): per-trace aggregates
    and the span rows."""
    trace_aggregates = {}
    all_span_rows = []
    SpanAttributeKey, GenAiSemconvKey = ns.SpanAttributeKey, ns.GenAiSemconvKey  # noqa: N806
    _try_parse_json_string, _span_aggregation_node = ns._try_parse_json_string, ns._span_aggregation_node
    finite_float_or_none, bounded_model_dimension = ns.finite_float_or_none, ns.bounded_model_dimension
    for trace_id, trace_spans in spans_by_trace.items():
        min_start_ms = min(s.start_time_ns for s in trace_spans) // 1_000_000
        end_times = [s.end_time_ns for s in trace_spans if s.end_time_ns is not None]
        max_end_ms = (max(end_times) // 1_000_000) if end_times else None
        root_span_status = self._get_trace_status_from_root_span(trace_spans)

        usage_nodes = []
        cost_nodes = []
        session_id = None
        user_id = None
        root_span_dict = None
        trace_tags_from_root_attr: dict[str, str] = {}
        for span in trace_spans:
            span_dict = ns.translate_span_when_storing(span)
            span_cost = None
            span_attributes = span_dict.get("attributes", {})
            usage_nodes.append(
                _span_aggregation_node(span.span_id, span.parent_id, span_attributes, SpanAttributeKey.CHAT_USAGE))
            cost_nodes.append(
                _span_aggregation_node(span.span_id, span.parent_id, span_attributes, SpanAttributeKey.LLM_COST))
            if span_attributes:
                if session_id is None and (
                    span_session_id := (
                        span_attributes.get(SpanAttributeKey.SESSION_ID)
                        or span_attributes.get(GenAiSemconvKey.CONVERSATION_ID)
                    )
                ):
                    session_id = ns.validate_session_id(_try_parse_json_string(span_session_id))
                if user_id is None and (span_user_id := span_attributes.get("user.id")):
                    user_id = _try_parse_json_string(span_user_id)
                span_cost = span_attributes.get(SpanAttributeKey.LLM_COST)

            content_json = json.dumps(span_dict, cls=ns.TraceJSONEncoder, ensure_ascii=self.db_type == ns.MSSQL)
            model_name = bounded_model_dimension(_try_parse_json_string(span_attributes.get(SpanAttributeKey.MODEL)))
            model_provider = bounded_model_dimension(
                _try_parse_json_string(span_attributes.get(SpanAttributeKey.MODEL_PROVIDER)))
            span_cost_values = {}
            if span_cost:
                try:
                    span_cost_values = json.loads(span_cost)
                except (TypeError, ValueError):
                    ns._logger.debug("Skipping malformed cost for span %s", span.span_id)

            all_span_rows.append({
                "trace_id": span.trace_id,
                "experiment_id": None,
                "span_id": span.span_id,
                "parent_span_id": span.parent_id,
                "name": span.name,
                "type": span.span_type,
                "status": span.status.status_code,
                "start_time_unix_nano": span.start_time_ns,
                "end_time_unix_nano": span.end_time_ns,
                "content": content_json,
                "input_cost": finite_float_or_none(span_cost_values.get("input_cost")),
                "output_cost": finite_float_or_none(span_cost_values.get("output_cost")),
                "total_cost": finite_float_or_none(span_cost_values.get("total_cost")),
                "model_name": model_name,
                "model_provider": model_provider,
            })

            if span.parent_id is None:
                root_span_dict = span_dict
                prefix = SpanAttributeKey.TRACE_TAG_PREFIX
                for attr_key, attr_value in span_attributes.items():
                    if attr_key.startswith(prefix):
                        tag_key = attr_key[len(prefix):]
                        tag_value = str(_try_parse_json_string(attr_value))
                        try:
                            tag_key, tag_value = ns._validate_trace_tag(tag_key, tag_value)
                        except Exception:
                            ns._logger.debug("Skipping invalid trace tag from OTLP attribute %r", attr_key)
                            continue
                        if tag_key == ns.TraceTagKey.TRACE_NAME:
                            tag_value = ns.validate_trace_name(tag_value)
                        trace_tags_from_root_attr[tag_key] = tag_value

        trace_aggregates[trace_id] = ns._TraceAggregate(
            min_start_ms=min_start_ms,
            max_end_ms=max_end_ms,
            root_span_status=root_span_status,
            trace_status=root_span_status or ns.TraceState.IN_PROGRESS.value,
            aggregated_token_usage=ns.aggregate_usage_from_span_nodes(usage_nodes) or {},
            aggregated_cost=ns.aggregate_cost_from_span_nodes(cost_nodes) or {},
            session_id=session_id,
            user_id=user_id,
            root_span_dict=root_span_dict,
            trace_tags=trace_tags_from_root_attr,
            usage_nodes=usage_nodes,
            cost_nodes=cost_nodes,
        )
    return trace_aggregates, all_span_rows
