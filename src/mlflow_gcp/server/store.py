"""A tracking store for PostgreSQL that logs metrics in two statements instead of MLflow's ORM round
trips, with exactly MLflow's results.

MLflow's SqlAlchemyStore builds one ORM object per metric, flushes them, reads and locks the
run's latest_metrics rows, compares in Python and flushes again; on a duplicate it rolls back and
retries. Here the same work is one multi-row `INSERT ... ON CONFLICT DO NOTHING` into metrics
(MLflow's duplicate rule: a metric identical in key, timestamp, step, value and NaN-ness to a
stored one is skipped, others are kept) and one multi-row upsert into latest_metrics that replaces
a row only when the new (step, timestamp, value) is strictly greater, as MLflow's comparison does
(PostgreSQL compares row values lexicographically, like Python tuples). Everything else,
validation, the run check and its error messages included, is MLflow's own code.

Registered as the `postgresql` tracking store (entry point `mlflow.tracking_store`), but used only
where MLFLOW_GCP_BULK_STORE=1, which our launcher sets for its workers: stock `mlflow server`
in the same environment (the benchmark, the differential test) keeps MLflow's store.
tests/integration/test_differential.py compares the answers with stock MLflow.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

BULK_ENV = "MLFLOW_GCP_BULK_STORE"
COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")


@contextlib.contextmanager
def _cursor(session):
    """A DB-API cursor on the session's connection, inside its transaction."""
    cursor = session.connection().connection.dbapi_connection.cursor()
    try:
        yield cursor
    finally:
        cursor.close()


def build_store(store_uri: str, artifact_uri: str | None = None, **_):
    """The `mlflow.tracking_store` builder for postgresql URIs."""
    if os.environ.get(BULK_ENV) != "1" or os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").lower() in ("1", "true"):
        # Everywhere else (stock `mlflow server`, `mlflow db upgrade`, a client with a postgresql
        # tracking URI): exactly what MLflow would build itself.
        from mlflow.tracking._tracking_service import utils

        builder = getattr(utils, "_get_sqlalchemy_store", None)
        if builder is not None:
            return builder(store_uri, artifact_uri)
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        return SqlAlchemyStore(store_uri, artifact_uri or os.environ.get("_MLFLOW_SERVER_ARTIFACT_ROOT", "./mlruns"))
    if artifact_uri is None:
        artifact_uri = os.environ.get("_MLFLOW_SERVER_ARTIFACT_ROOT", "./mlruns")
    cls = _bulk_class()
    # One line per worker, so an operator (and the differential test) can see which store runs.
    print(f"INFO tracking store: {cls.__name__}", file=sys.stderr, flush=True)
    return cls(store_uri, artifact_uri)


_CLASS = None
_SEARCHING = threading.local()  # set while MLflow's _search_runs builds its query in this thread


def _bulk_class():
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_class()
    return _CLASS


def _make_class():
    from mlflow.entities import LifecycleStage
    from mlflow.store.tracking.dbmodels.models import SqlInput, SqlLatestMetric, SqlMetric, SqlRun
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils import validation
    from mlflow.utils.validation import _validate_metric

    if not hasattr(SqlAlchemyStore, "_log_metrics_once"):
        # MLflow restructured its metric path: keep its store rather than guess.
        return SqlAlchemyStore

    from psycopg2.extras import execute_values

    light_search = None
    try:  # the data loading search_runs replaces; without these pieces, MLflow's search runs
        from mlflow.entities import Metric, Param, Run, RunData, RunTag
        from mlflow.store.tracking.dbmodels.models import SqlRun, _get_run_name_from_tags
        from sqlalchemy.orm import noload

        if callable(getattr(SqlAlchemyStore, "_search_runs", None)):
            light_search = [noload(SqlRun.latest_metrics), noload(SqlRun.params), noload(SqlRun.tags)]
    except ImportError:
        pass
    data_queries = (
        f'SELECT run_uuid, "key", "value", "timestamp", "step", is_nan FROM {SqlLatestMetric.__tablename__} '
        "WHERE run_uuid = ANY(%s)",
        'SELECT run_uuid, "key", "value" FROM params WHERE run_uuid = ANY(%s)',
        'SELECT run_uuid, "key", "value" FROM tags WHERE run_uuid = ANY(%s)',
    )

    names = ", ".join(f'"{c}"' for c in COLUMNS)
    insert_metrics = f'INSERT INTO {SqlMetric.__tablename__} ({names}) VALUES %s ON CONFLICT DO NOTHING'
    latest = SqlLatestMetric.__tablename__
    upsert_latest = (
        f'INSERT INTO {latest} ({names}) VALUES %s ON CONFLICT ("key", "run_uuid") DO UPDATE SET '
        '"value" = EXCLUDED."value", "timestamp" = EXCLUDED."timestamp", "step" = EXCLUDED."step", '
        '"is_nan" = EXCLUDED."is_nan" WHERE (EXCLUDED."step", EXCLUDED."timestamp", EXCLUDED."value") > '
        f'({latest}."step", {latest}."timestamp", {latest}."value")'
    )

    batch_checks = [getattr(validation, name, None) for name in (
        "_validate_run_id", "_validate_batch_log_data", "_validate_batch_log_limits", "_validate_param_keys_unique")]
    validate_run_id, validate_data, validate_limits, validate_unique = batch_checks
    run_state = f"SELECT lifecycle_stage FROM {SqlRun.__tablename__} WHERE run_uuid = %s"
    # The filters of MLflow's _get_run_inputs and _get_model_outputs_bulk queries.
    inputs = SqlInput.__tablename__
    any_run_input = (f"SELECT 1 FROM {inputs} WHERE destination_type = 'RUN' "
                     "AND destination_id = ANY(%s) LIMIT 1")
    any_run_output = (f"SELECT 1 FROM {inputs} WHERE source_type = 'RUN_OUTPUT' "
                      "AND destination_type = 'MODEL_OUTPUT' AND source_id = ANY(%s) LIMIT 1")

    class BulkPostgresStore(SqlAlchemyStore):
        if all(batch_checks):

            def log_batch(self, run_id, metrics, params, tags):
                # A metrics-only batch: MLflow's checks in MLflow's order, then one transaction
                # (MLflow's log_batch holds a session for its run check while _log_metrics opens
                # a second one that checks the run again). Anything else is MLflow's own.
                if params or tags or any(m.model_id is not None for m in metrics):
                    return super().log_batch(run_id, metrics, params, tags)
                validate_run_id(run_id)
                metrics, params, tags = validate_data(metrics, params, tags)
                validate_limits(metrics, params, tags)
                validate_unique(params)
                self._log_metrics(run_id, metrics)

        # Runs with no dataset inputs or logged-model outputs (most) get MLflow's empty answer
        # after one plain EXISTS query instead of its ORM join; any row found, and MLflow's own
        # query builds the answer. search_runs asks both for every page of runs.
        def _get_run_inputs(self, session, run_uuids):
            with _cursor(session) as cursor:
                cursor.execute(any_run_input, (list(run_uuids),))
                if cursor.fetchone() is None:
                    return [[] for _ in run_uuids]
            return super()._get_run_inputs(session, run_uuids)

        def _get_model_outputs_bulk(self, run_ids, session):
            with _cursor(session) as cursor:
                cursor.execute(any_run_output, (list(run_ids),))
                if cursor.fetchone() is None:
                    return {run_id: [] for run_id in run_ids}
            return super()._get_model_outputs_bulk(run_ids=run_ids, session=session)

        def _check_run_for_metrics(self, session, cursor, run_id):
            """MLflow's run check, with one plain query in the usual case (the run exists and is
            active); otherwise MLflow's own code raises its own error."""
            cursor.execute(run_state, (run_id,))
            row = cursor.fetchone()
            if row is None or row[0] != LifecycleStage.ACTIVE:
                self._check_run_is_active(self._get_run(run_uuid=run_id, session=session))

        def _log_metrics_once(self, run_id, metrics):
            rows = []
            seen = set()
            single = len(metrics) == 1
            for idx, metric in enumerate(metrics):
                _validate_metric(metric.key, metric.value, metric.timestamp, metric.step,
                                 path="" if single else f"metrics[{idx}]")
                if metric in seen:
                    continue
                seen.add(metric)
                is_nan, value = self.sanitize_metric_value(metric.value)
                rows.append({"run_uuid": run_id, "key": metric.key, "value": value,
                             "timestamp": metric.timestamp, "step": metric.step, "is_nan": is_nan})
            with self.ManagedSessionMaker(read_only=False) as session, _cursor(session) as cursor:
                self._check_run_for_metrics(session, cursor, run_id)
                if rows:
                    self._write_metric_rows(cursor, rows)

        def _write_metric_rows(self, cursor, rows):
            # Per key, the first of the greatest (step, timestamp, value): MLflow's loop
            # replaces its candidate only on strictly greater.
            latest: dict[str, dict] = {}
            for row in rows:
                best = latest.get(row["key"])
                if best is None or (row["step"], row["timestamp"], row["value"]) > (
                    best["step"], best["timestamp"], best["value"]
                ):
                    latest[row["key"]] = row
            # One multi-row VALUES statement each, built by psycopg2 in C (an executemany is a
            # round trip per row; SQLAlchemy compiling 600 bind parameters costs more than
            # the database work). 1,000 metrics, MLflow's batch limit, make one statement.
            execute_values(cursor, insert_metrics, [tuple(r[c] for c in COLUMNS) for r in rows],
                           page_size=len(rows))
            # Sorted keys: concurrent batches lock latest_metrics rows in one order.
            execute_values(cursor, upsert_latest,
                           [tuple(latest[k][c] for c in COLUMNS) for k in sorted(latest)],
                           page_size=len(latest))

        # search_runs: MLflow builds the query (filters, ordering, paging, inputs) and loads the
        # runs; their metrics, params and tags, which MLflow hydrates as ~25 ORM objects per
        # run, come from three plain queries instead.
        if light_search is not None:

            def _get_eager_run_query_options(self):
                if getattr(_SEARCHING, "on", False):
                    return light_search
                return SqlAlchemyStore._get_eager_run_query_options()

            def _search_runs(self, *args, **kwargs):
                _SEARCHING.on = True
                try:
                    runs, token = super()._search_runs(*args, **kwargs)
                finally:
                    _SEARCHING.on = False
                return self._with_data(runs), token

            def _with_data(self, runs):
                if not runs:
                    return runs
                ids = [run.info.run_id for run in runs]
                data = {rid: ([], [], []) for rid in ids}
                with self.ManagedSessionMaker() as session, _cursor(session) as cursor:
                    for slot, query in enumerate(data_queries):
                        cursor.execute(query, (ids,))
                        for row in cursor.fetchall():
                            data[row[0]][slot].append(row)
                out = []
                for run in runs:
                    metrics, params, tags = data[run.info.run_id]
                    tags = [RunTag(k, v) for _, k, v in tags]
                    run_data = RunData(
                        metrics=[Metric(k, float("nan") if nan else v, ts, step) for _, k, v, ts, step, nan in metrics],
                        params=[Param(k, v) for _, k, v in params],
                        tags=tags,
                    )
                    if not run.info.run_name and (name := _get_run_name_from_tags(tags)):
                        run.info._set_run_name(name)  # as SqlRun.to_mlflow_entity does
                    out.append(Run(run.info, run_data, run.inputs, run.outputs))
                return out

    return BulkPostgresStore
