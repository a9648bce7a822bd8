"""A tracking store for PostgreSQL that logs metrics in two statements instead of MLflow's ORM round
trips, with exactly MLflow's results.

MLflow's SqlAlchemyStore builds one ORM object per metric, flushes them, reads and locks the
run's latest_metrics rows, compares in Python and flushes again; on a duplicate it rolls back and
retries. Here the same work is one multi-row `INSERT ... ON CONFLICT DO NOTHING` into metrics
(MLflow's duplicate rule: a metric identical in key, timestamp, step, value and NaN-ness to a
stored one is skipped, others are kept) and one multi-row upsert into latest_metrics that replaces
a row only when the new (step, timestamp, value) is strictly greater, as MLflow's comparison does
(PostgreSQL compares row values lexicographically, like Python tuples). Both go to PostgreSQL
with the run check as one autocommitted statement (data-modifying CTEs that write only if the
run is active): one round trip, no BEGIN or COMMIT of its own. For the values MLflow's protobuf
parse gives (every metric sent over HTTP) that statement is prepared once per connection and
takes the rows as column arrays (`metric_write`); other values get it with rendered VALUES, as
MLflow's insert renders them. Everything else, validation and
the run check's error messages included (a run that is missing or not active), is MLflow's own
code.

Same behaviour under contention and errors (issue 13): the statements run through SQLAlchemy
(`exec_driver_sql`), so a PostgreSQL error becomes the SQLAlchemy error MLflow's session handling
turns into MLflow's MlflowException and code (a statement timeout or a lost connection:
TEMPORARILY_UNAVAILABLE; a constraint violation: BAD_REQUEST), a dead connection is invalidated,
and MLflow's `_log_metrics` retries a deadlock as it does for its own statements. Rows are written
in one order (metrics by primary key, latest_metrics by key), so two batches over the same keys
wait for each other instead of deadlocking. tests/integration/test_store_faults.py injects each
failure on real PostgreSQL into both stores and compares.

Registered as the `postgresql` tracking store (entry point `mlflow.tracking_store`), but used only
where MLFLOW_GCP_BULK_STORE=1, which our launcher sets for its workers: stock `mlflow server`
in the same environment (the benchmark, the differential test) keeps MLflow's store.
tests/integration/test_differential.py compares the answers with stock MLflow.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import threading
from math import isfinite
from operator import itemgetter
from typing import NamedTuple

BULK_ENV = "MLFLOW_GCP_BULK_STORE"
COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")
# A params INSERT that lost a race on the params primary key is run again (MLflow's single
# log_param and _set_tags recover the same way): by then the other writer has committed.
PARAM_ATTEMPTS = 3


def _execute(session, statement: str, params=None):
    """`statement` in the session's transaction, through SQLAlchemy: a driver error comes out as
    the SQLAlchemy error MLflow's ManagedSessionMaker translates, as for MLflow's own queries."""
    return session.connection().exec_driver_sql(statement, params)


def _execute_plain(session, statement: str, params=None):
    """`_execute` on the DBAPI cursor of the session's connection: the same statement, parameters,
    rows and errors (SQLAlchemy's own handling of a driver error on this connection: the same
    wrapped error, a disconnect invalidating the connection and the pool, as PooledScope does)
    without SQLAlchemy's execution context and result (CursorResult, its metadata) per statement.

    Why: under the replayed trace ingest (~10 statements per trace), py-spy on our workers in GIL
    mode put ~8% of their CPU in SQLAlchemy around exec_driver_sql, half of it building the
    result's metadata. A connection with event listeners or statement logging, or whose
    transaction SQLAlchemy would refuse, gets `_execute`: those need SQLAlchemy's path."""
    connection = _session_connection(session)
    pooled = connection._dbapi_connection
    transaction = connection._transaction
    if (pooled is None or transaction is None or not transaction.is_active or connection._has_events
            or connection.engine._has_events or connection.dialect._has_events or connection._echo):
        return _execute(session, statement, params)
    # SQLAlchemy hands psycopg2 an empty mapping where there are no parameters (its pyformat
    # dialects): "%%" is then read as "%", as there.
    params = {} if params is None else params
    return _on_cursor(pooled.dbapi_connection, connection.dialect, lambda: connection, statement, params, _Rows)


def _on_cursor(dbapi_connection, dialect, sqlalchemy_connection, statement: str, params, take):
    """`take(cursor)` after `statement` on a new cursor of `dbapi_connection`. A driver error of
    `dialect`'s DBAPI (or an exit exception) is handed to the SQLAlchemy Connection that
    `sqlalchemy_connection()` gives over the same pooled connection, which wraps it as its own
    execute would (the same message, a disconnect invalidating the connection and the pool).
    Shared by the trace writes (`_execute_plain`) and the log-batch write (`PooledScope`)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(statement, params)
        return take(cursor)
    except BaseException as err:
        from sqlalchemy.util import is_exit_exception

        if isinstance(err, dialect.loaded_dbapi.Error) or is_exit_exception(err):
            sqlalchemy_connection()._handle_dbapi_exception(err, statement, params, cursor, None)
        raise
    finally:
        if not cursor.closed:
            cursor.close()


def _session_connection(session):
    """`session.connection()`, looked up once per session transaction (SQLAlchemy's lookup through
    the session's transaction states was ~3.5% of a worker's CPU under the replayed trace ingest,
    once per statement); a new transaction (after a commit or rollback) looks it up again."""
    transaction = session.__dict__.get("_transaction")
    cached = session.__dict__.get("_mlflow_gcp_connection")
    if cached is not None and transaction is not None and cached[0] is transaction and transaction.is_active:
        return cached[1]
    connection = session.connection()
    session.__dict__["_mlflow_gcp_connection"] = (session._transaction, connection)
    return connection


def _first_row(cursor):
    return cursor.fetchone() if cursor.description is not None else None


class _Rows:
    """What the trace writes use of a CursorResult (first, fetchall, scalar, rowcount), over the
    rows fetched at once; rows are named tuples (attribute access by column name, as Row's)."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, cursor):
        self.rowcount = cursor.rowcount
        description = cursor.description
        if description is None:
            self.rows = None
        else:
            make = _row_class(tuple(column.name for column in description))._make
            self.rows = [make(row) for row in cursor.fetchall()]

    def _fetched(self) -> list:
        if self.rows is None:
            from sqlalchemy.exc import ResourceClosedError

            raise ResourceClosedError("This result object does not return rows. It has been closed automatically.")
        return self.rows

    def fetchall(self) -> list:
        rows, self.rows = self._fetched(), []
        return rows

    def first(self):
        rows = self._fetched()
        self.rows = []
        return rows[0] if rows else None

    def scalar(self):
        row = self.first()
        return row[0] if row is not None else None


@functools.lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]):
    from collections import namedtuple

    return namedtuple("Row", names, rename=True)


def _insert_rows(session, *inserts: tuple[str, str, list[tuple]], guard: tuple | None = None,
                 before: list[tuple] = (), after: list[tuple] = ()):
    """Each (head, tail, rows) as `head VALUES (..),(..) tail`, all sent in one round trip and
    run in order. The VALUES are rendered by psycopg2 on the client, as its execute_values does
    (an executemany is a round trip per row; SQLAlchemy compiling 6,000 bind parameters costs
    more than the database work), and the statements run on the session's connection (`_execute_plain`). An
    error names the statements, not their 1,000 rows.

    With `guard` (query, its one parameter, a value), one statement instead: the query as a CTE
    whose rows it returns, and each insert a data-modifying CTE that inserts only if the query's
    first column has that value.

    Without `guard`, the (statement, params) of `before` and `after` are rendered the same way and
    sent in the same round trip, before and after the inserts; the result is the last statement's."""
    from psycopg2.extensions import encodings
    from sqlalchemy.exc import DBAPIError

    connection = _session_connection(session)
    raw = connection.connection.dbapi_connection
    encoding = encodings[raw.encoding]
    cursor = raw.cursor()
    try:
        statements = []
        for head, tail, rows in inserts:
            template = "(" + ",".join(["%s"] * len(rows[0])) + ")"
            values = b",".join([cursor.mogrify(template, row) for row in rows]).decode(encoding)
            statements.append((head, values, tail))
        if guard is not None:
            query, param, wanted = guard
            with_guard = cursor.mogrify(f"WITH guard(state) AS ({query})", (param,)).decode(encoding)
            passes = cursor.mogrify("WHERE EXISTS (SELECT FROM guard WHERE state = %s)", (wanted,)).decode(encoding)
        first = [cursor.mogrify(statement, params).decode(encoding) for statement, params in before]
        last = [cursor.mogrify(statement, params).decode(encoding) for statement, params in after]
    finally:
        cursor.close()
    if guard is None:
        sql = ";\n".join([*first, *(f"{head} VALUES {values} {tail}" for head, values, tail in statements), *last])
        shown = ";\n".join([*(s for s, _ in before),
                             *(f"{head} VALUES <{len(rows)} rows> {tail}" for head, tail, rows in inserts),
                             *(s for s, _ in after)])
    else:
        # Each insert runs once, to completion, and all see the guard's one snapshot. PostgreSQL
        # runs data-modifying CTEs the final SELECT does not read last to first; each insert
        # reading its predecessor's RETURNING first keeps them in order instead (the lock order
        # of _write_metric_rows).
        def one(shown_values):
            parts = [with_guard]
            for n, ((head, _, tail), values) in enumerate(zip(statements, shown_values)):
                after = f" AND (SELECT count(*) FROM w{n - 1}) >= 0" if n else ""
                parts.append(f"w{n} AS ({head} SELECT * FROM (VALUES {values}) AS v {passes}{after} {tail} RETURNING 1)")
            return ",\n".join(parts) + "\nSELECT state FROM guard"

        sql = one([values for _, values, _ in statements])
        shown = one([f"<{len(rows)} rows>" for _, _, rows in inserts])
    try:
        # Rendered already, but SQLAlchemy still hands psycopg2 an empty parameter mapping, and
        # psycopg2 then reads every "%" as a placeholder: a value holding "50%" or "%s" (a span's
        # text, a tag, a preview) failed with a TypeError. "%%" is psycopg2's escape of "%".
        return _execute_plain(session, sql.replace("%", "%%"))
    except DBAPIError as err:
        err.statement = shown
        raise


def _lost_race_on(err, table: str) -> bool:
    """True for MLflow's wrapping of a unique violation on `table`'s key."""
    orig = getattr(getattr(err, "__cause__", None), "orig", None)
    diag = getattr(orig, "diag", None)
    return getattr(orig, "pgcode", None) == "23505" and getattr(diag, "table_name", None) == table


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
_CHECKED = threading.local()  # .metrics: the list log_batch just validated in this thread
# Metric keys that passed MLflow's name and length checks (a pure function of the key); bounded.
_CHECKED_NAMES: set[str] = set()
MAX_CHECKED_NAMES = 100_000
_SEARCHING = threading.local()  # set while MLflow's _search_runs builds its query in this thread


def _bulk_class():
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_class()
    return _CLASS


def _make_class():
    from mlflow.entities import LifecycleStage, Metric
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR
    from mlflow.store.tracking.dbmodels.models import SqlInput, SqlLatestMetric, SqlMetric, SqlRun
    from mlflow.store.db import utils as db_utils
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils import validation
    from mlflow.utils.validation import _validate_metric
    from mlflow.utils.validation import _validate_tag as validate_tag
    from sqlalchemy.orm import sessionmaker

    if not all(hasattr(SqlAlchemyStore, name) for name in ("_log_metrics_once", "_run_with_deadlock_retry")):
        # MLflow restructured its metric path or its deadlock retry: keep its store rather than guess.
        return SqlAlchemyStore

    light_search = None
    try:  # the data loading search_runs replaces; without these pieces, MLflow's search runs
        from mlflow.entities import Metric, Param, Run, RunData, RunTag
        from mlflow.store.tracking.dbmodels.models import _get_run_name_from_tags
        from sqlalchemy.orm import lazyload

        if callable(getattr(SqlAlchemyStore, "_search_runs", None)):
            light_search = _light_search_options(SqlRun, lazyload)
    except ImportError:
        pass
    from mlflow_gcp.server import search_query

    # MLflow's _search_runs with the runs read from its statement's rows (server/search_query.py),
    # where MLflow's method is the one it copies; otherwise MLflow's own, under light_search.
    search_runs = search_query.reader(SqlAlchemyStore) if light_search is not None else None
    search_runs = search_runs or SqlAlchemyStore._search_runs
    data_queries = (
        f'SELECT run_uuid, "key", "value", "timestamp", "step", is_nan FROM {SqlLatestMetric.__tablename__} '
        "WHERE run_uuid = ANY(%s)",
        'SELECT run_uuid, "key", "value" FROM params WHERE run_uuid = ANY(%s)',
        'SELECT run_uuid, "key", "value" FROM tags WHERE run_uuid = ANY(%s)',
    )

    statements = metric_statements(SqlMetric.__tablename__, SqlLatestMetric.__tablename__)
    write = metric_write(SqlMetric.__tablename__, SqlLatestMetric.__tablename__, SqlRun.__tablename__,
                         LifecycleStage.ACTIVE)

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
    # Both in one round trip, for a search's page of runs.
    any_run_input_output = (f"SELECT EXISTS ({any_run_input.replace('%s', '%(ids)s')}), "
                            f"EXISTS ({any_run_output.replace('%s', '%(ids)s')})")

    from mlflow.entities import Trace, TraceData

    from mlflow_gcp.server import trace_merges, trace_reads, trace_writes

    merge_session = trace_merges.session_class(_insert_rows)
    if merge_session is not None:
        merge_session = trace_writes.starting_session(merge_session, lambda *args: _execute_plain(*args))
    trace_write_hooks = _trace_write_hooks(trace_writes)
    # MLflow's _log_spans_once with its database phases as plain statements (server/trace_spans.py)
    span_writer = None
    if trace_write_hooks is not None:
        from mlflow_gcp.server import trace_spans

        span_writer = trace_spans.writer(SqlAlchemyStore, lambda *args: _execute_plain(*args),
                                         lambda *args, **kwargs: _insert_rows(*args, **kwargs),
                                         trace_write_hooks.in_session)
    from mlflow_gcp.server import trace_start

    # start_trace as plain statements (server/trace_start.py), where MLflow's sources match
    plain_start = (trace_start.starter(SqlAlchemyStore, lambda *args: _execute_plain(*args),
                                       lambda *args, **kwargs: _insert_rows(*args, **kwargs))
                   if trace_write_hooks is not None else None)
    trace_read = trace_reads.reader(_execute)

    class BulkPostgresStore(SqlAlchemyStore):
        _span_writer = staticmethod(span_writer) if span_writer is not None else None

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # MLflow's own session factory (its __init__ without a read replica), with trace tag
            # and metadata merges batched (server/trace_merges.py).
            maker = getattr(db_utils, "_get_managed_session_maker", None)
            if merge_session is not None and maker is not None and getattr(self, "read_engine", 1) is None:
                self.ManagedSessionMaker = maker(sessionmaker(bind=self.engine, class_=merge_session), self.db_type)
            # The metric write's: MLflow's managed scope (its commit, rollback and translation of
            # errors into MlflowException) around one pooled DBAPI connection (PooledScope)
            # instead of an ORM Session, which the one statement does not use (~0.2 ms of CPU
            # per batch), or a SQLAlchemy Connection (~0.1 ms more than the pooled connection).
            self._managed_connection = (maker(functools.partial(PooledScope, self.engine), self.db_type)
                                        if maker is not None else None)

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
                # validate_data just ran MLflow's per-metric check on this very list: the write
                # (_log_metrics_once, below MLflow's _log_metrics) skips running it a second time.
                _CHECKED.metrics = metrics
                try:
                    self._log_metrics(run_id, metrics)
                except MlflowException:
                    raise
                except Exception as err:  # as MLflow's log_batch wraps whatever its writes raise
                    raise MlflowException(err, INTERNAL_ERROR) from err
                finally:
                    _CHECKED.metrics = None

            def log_metric_fields(self, run_id, fields):
                """`log_batch(run_id, metrics, [], [])` for the metrics of a plain log-batch body as
                server/fastpath.py parses them, (key, value, timestamp, step, own run id or None)
                with the types MLflow's protobuf parse gives (a non-empty str, a float, ints),
                without a Metric per value: MLflow's checks in MLflow's order, with the same
                outcome, then the same write. A batch whose keys all passed MLflow's name check
                before and whose timestamps are not negative passes MLflow's per-metric check
                (nothing else in it can fail for these types); any other batch gets the check
                itself, which raises MLflow's error for the first metric that fails it."""
                validate_run_id(run_id)
                names = _CHECKED_NAMES
                if not all(ts >= 0 and key in names for key, _, ts, _, _ in fields):
                    validate_data([Metric(k, v, ts, step, run_id=own) for k, v, ts, step, own in fields], [], [])
                    if len(names) > MAX_CHECKED_NAMES:
                        names.clear()
                    names.update(key for key, *_ in fields)
                validate_limits(fields, [], [])
                # MLflow's duplicate rule (Metric equality: key, value, timestamp, step, run id),
                # the first of equal ones kept; a dict's keys, as a set's, match by identity or ==.
                rows = [(k, v, ts, step, False, run_id) for k, v, ts, step, _ in dict.fromkeys(fields)]
                # A finite value MLflow's sanitize keeps as is; a sum that is not finite has a
                # value that is not (or overflowed: then each is looked at, to the same end).
                if not isfinite(sum(map(_VALUE, rows))):
                    rows = sanitized(rows, self.sanitize_metric_value)
                try:
                    # typed: the parse gave each field MLflow's protobuf type (see the docstring)
                    self._run_with_deadlock_retry(self._write_metric_rows_once, run_id, rows, typed=True)
                except MlflowException:
                    raise
                except Exception as err:  # as MLflow's log_batch wraps whatever its writes raise
                    raise MlflowException(err, INTERNAL_ERROR) from err

        if trace_write_hooks is not None:
            # MLflow's own log_spans and start_trace, with its span upsert and its experiment read
            # done lighter while they run (server/trace_writes.py).
            def _log_spans_once(self, location, spans, tracking_uri=None):
                if self._span_writer is not None and self._span_writer.applies(self):
                    return self._span_writer(self, location, spans)
                with trace_writes.in_trace_write():
                    return super()._log_spans_once(location, spans, tracking_uri=tracking_uri)

            def _start_trace_once(self, trace_info):
                with trace_writes.in_trace_write():
                    if plain_start is not None and plain_start.applies(self, trace_info):
                        return plain_start(self, trace_info)
                    with trace_writes.in_start_trace():
                        return super()._start_trace_once(trace_info)

            def get_experiment(self, experiment_id):
                if not trace_writes.writing():
                    return super().get_experiment(experiment_id)
                return trace_write_hooks(self, experiment_id)

            def _advance_db_payload_generations_for_db_span_writes(self, session, trace_ids):
                # MLflow's ORM UPDATE as one plain statement while our store writes traces
                # (server/trace_writes.py); its readers and its error when a trace is not bumped.
                ids = list(dict.fromkeys(trace_ids))
                if not ids or not trace_writes.writing() or session.bind.dialect.name != "postgresql":
                    return super()._advance_db_payload_generations_for_db_span_writes(session, ids)
                if session.autoflush:  # as the ORM UPDATE autoflushes (merges held included)
                    session.flush()
                if _execute_plain(session, *trace_writes.bump_generations(ids)).rowcount == len(ids):
                    return None
                existing = self._get_existing_trace_ids(session, ids)
                return self._raise_log_spans_trace_write_conflict_error(
                    blocked_trace_ids=self._get_trace_ids_outside_tracking_store(session, ids),
                    missing_trace_ids=[trace_id for trace_id in ids if trace_id not in existing])

        if trace_read is not None and hasattr(SqlAlchemyStore, "_get_spans_with_trace_info"):

            def batch_get_traces(self, trace_ids, location=None, experiment_ids=None):
                # The trace rows read as plain queries (server/trace_reads.py); MLflow's own code
                # sorts, checks and wraps each trace's spans.
                if trace_ids:
                    with self.ManagedSessionMaker() as session:
                        read = trace_read(session, list(trace_ids), experiment_ids)
                    if read is not None:
                        traces = []
                        for info, snapshots in read:
                            spans = self._get_spans_with_trace_info(info, snapshots, allow_partial=False)
                            if spans:  # a trace not fully exported yet is left out, as MLflow does
                                traces.append(Trace(info=info, data=TraceData(spans=spans)))
                        return traces
                return super().batch_get_traces(trace_ids, location, experiment_ids)

        def _log_params(self, run_id, params):
            # MLflow's own code. Two batches logging the same new keys at once both read "absent"
            # and insert; the later one fails on the params key (stock: BAD_REQUEST, or a
            # deadlock: TEMPORARILY_UNAVAILABLE). Run again, it sees the committed params and
            # answers as MLflow does when they were logged first: same value skipped, another
            # value MLflow's "Changing param values" error.
            for attempt in range(PARAM_ATTEMPTS):
                try:
                    return self._run_with_deadlock_retry(super()._log_params, run_id, params)
                except MlflowException as err:
                    if attempt + 1 == PARAM_ATTEMPTS or not _lost_race_on(err, "params"):
                        raise

        def _set_tags(self, run_id, tags):
            # MLflow's own code, given the tags in key order (stable: a key given twice keeps its
            # last value). MLflow inserts them in the order given and retries only a lost race
            # (IntegrityError), so two batches over the same new keys in opposite orders can
            # deadlock on the tags key, which stock answers INTERNAL_ERROR. In one order they wait
            # for each other; a deadlock left (updates and inserts mixed) is run again as MLflow
            # runs its other writes. Checked first in the order given, so an error names the tag
            # by its place in the request.
            if tags:
                tags = sorted((validate_tag(t.key, t.value, path=f"tags[{idx}]") for idx, t in enumerate(tags)),
                              key=lambda tag: tag.key)
            return self._run_with_deadlock_retry(super()._set_tags, run_id, tags)

        # Runs with no dataset inputs or logged-model outputs (most) get MLflow's empty answer
        # after one plain EXISTS query instead of its ORM join; any row found, and MLflow's own
        # query builds the answer. search_runs asks both for every page of runs: within our
        # light search (below) both are asked at once, and the page's metrics, params and tags
        # read in the same transaction (not a second session: its checkout, BEGIN and COMMIT).
        def _get_run_inputs(self, session, run_uuids):
            if getattr(_SEARCHING, "on", False):
                ids = list(run_uuids)
                any_input, _SEARCHING.any_output = _execute(session, any_run_input_output, {"ids": ids}).first()
                _SEARCHING.data = self._data_rows(session, ids)
            else:
                any_input = _execute(session, any_run_input, (list(run_uuids),)).first() is not None
            if not any_input:
                return [[] for _ in run_uuids]
            return super()._get_run_inputs(session, run_uuids)

        def _get_model_outputs_bulk(self, run_ids, session):
            if getattr(_SEARCHING, "on", False):
                any_output, _SEARCHING.any_output = getattr(_SEARCHING, "any_output", True), True
            else:
                any_output = _execute(session, any_run_output, (list(run_ids),)).first() is not None
            if not any_output:
                return {run_id: [] for run_id in run_ids}
            return super()._get_model_outputs_bulk(run_ids=run_ids, session=session)

        def _data_rows(self, session, ids) -> dict:
            """run id -> (latest metrics, params, tags) rows, in PostgreSQL's row order."""
            data = {rid: ([], [], []) for rid in ids}
            if ids:
                for slot, query in enumerate(data_queries):
                    result = _execute(session, query, (ids,))
                    # The driver's tuples as they are: SQLAlchemy's row-by-row iteration of
                    # ~2,500 rows cost more than the three queries' round trips.
                    for row in result.cursor.fetchall():
                        data[row[0]][slot].append(row)
                    result.close()
            return data

        def _check_run_for_metrics(self, session, run_id):
            """MLflow's run check, with one plain query in the usual case (the run exists and is
            active); otherwise MLflow's own code raises its own error."""
            row = _execute(session, run_state, (run_id,)).first()
            if row is None or row[0] != LifecycleStage.ACTIVE:
                self._check_run_is_active(self._get_run(run_uuid=run_id, session=session))

        def _log_metrics_once(self, run_id, metrics):
            # MLflow's _log_metrics calls this and retries it on a deadlock.
            rows = []
            seen = set()
            single = len(metrics) == 1
            checked = getattr(_CHECKED, "metrics", None) is metrics
            for idx, metric in enumerate(metrics):
                if not checked:
                    _validate_metric(metric.key, metric.value, metric.timestamp, metric.step,
                                     path="" if single else f"metrics[{idx}]")
                if metric in seen:
                    continue
                seen.add(metric)
                is_nan, value = self.sanitize_metric_value(metric.value)
                rows.append((metric.key, value, metric.timestamp, metric.step, is_nan, run_id))
            self._write_metric_rows_once(run_id, rows)

        def _write_metric_rows_once(self, run_id, rows, typed=False):
            if rows and self._write_if_active(run_id, rows, typed):
                return
            # No rows, or the run is missing or not active (MLflow's check then raises its error).
            with self.ManagedSessionMaker(read_only=False) as session:
                self._check_run_for_metrics(session, run_id)
                if rows:
                    self._write_metric_rows(session, rows)

        def _write_if_active(self, run_id, rows, typed=False) -> bool:
            """The run check and both writes as one statement in one round trip, committed by
            PostgreSQL itself (autocommit: no BEGIN and COMMIT round trips); True when written.
            One statement sees one snapshot, so the rows are written exactly when the check
            passes, as MLflow's check-then-write in one transaction would; False (nothing
            written) when the run is missing or not active. `typed`: see metric_write_params."""
            params = metric_write_params(run_id, rows, typed)
            by_session = params is None or self._managed_connection is None
            with (self.ManagedSessionMaker if by_session else self._managed_connection)(read_only=False) as scope:
                # psycopg2's own switch, client-side: SQLAlchemy's AUTOCOMMIT isolation level
                # would send a SET before and after (two more round trips). No transaction is
                # open yet (psycopg2 sends its BEGIN with the first statement), so it may switch.
                raw = (scope.connection().connection if by_session else scope.pooled).dbapi_connection
                raw.autocommit = True
                try:
                    if by_session:  # values of other types: rendered as MLflow's would be
                        row = _insert_rows(scope, *self._metric_inserts(rows),
                                           guard=(run_state, run_id, LifecycleStage.ACTIVE)).first()
                    else:
                        row = scope.execute_prepared(write, params)
                finally:
                    if not raw.closed:  # back as the pool handed it out, before it goes back
                        raw.autocommit = False
            return row is not None and row[0] == LifecycleStage.ACTIVE

        def _write_metric_rows(self, session, rows):
            _insert_rows(session, *self._metric_inserts(rows))

        def _metric_inserts(self, rows):
            return metric_inserts(rows, statements)

        # search_runs: MLflow builds the query (filters, ordering, paging, inputs) and loads the
        # runs; their metrics, params and tags, which MLflow hydrates as ~25 ORM objects per
        # run, come from three plain queries instead.
        if light_search is not None:

            def _get_eager_run_query_options(self):
                if getattr(_SEARCHING, "on", False):
                    return light_search
                return SqlAlchemyStore._get_eager_run_query_options()

            def _light_search_runs(self, *args, **kwargs):
                """MLflow's _search_runs (server/search_query.py's copy, or MLflow's own under
                light_search), the runs without their data, and the (metrics, params, tags) rows
                of each run (_data_rows) read in its transaction."""
                _SEARCHING.on, _SEARCHING.data, _SEARCHING.any_output = True, None, True
                try:
                    runs, token = search_runs(self, *args, **kwargs)
                    data = _SEARCHING.data
                finally:
                    _SEARCHING.on, _SEARCHING.data = False, None
                if data is None:  # MLflow did not ask for the runs' inputs: read them now
                    data = self._run_data_rows(runs)
                return runs, token, data

            def _search_runs(self, *args, **kwargs):
                runs, token, data = self._light_search_runs(*args, **kwargs)
                return self._with_data(runs, data), token

            def search_runs_answer(self, experiment_ids, filter_string, run_view_type, max_results,
                                   order_by, page_token) -> str | None:
                """search_runs' REST answer as JSON (server/search.py), or None: MLflow's path
                then answers. MLflow's _search_runs finds the runs (_light_search_runs)."""
                from mlflow_gcp.server import search

                runs, token, data = self._light_search_runs(
                    experiment_ids, filter_string, run_view_type, max_results, order_by, page_token)
                out = []
                try:
                    for run in runs:
                        info = run.info
                        metrics, params, tags = data[info.run_id]
                        if not info.run_name and (name := _get_run_name_from_tags([RunTag(k, v) for _, k, v in tags])):
                            info._set_run_name(name)  # as SqlRun.to_mlflow_entity does
                        out.append(search.run_json(run, metrics, params, tags))
                except search.Fallback:
                    return None
                return search.answer_text(out, token)

            def _run_data_rows(self, runs) -> dict:
                ids = [run.info.run_id for run in runs]
                if not ids:
                    return {}
                with self.ManagedSessionMaker() as session:
                    return self._data_rows(session, ids)

            def _with_data(self, runs, data):
                if not runs:
                    return runs
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


def _trace_write_hooks(trace_writes):
    """Installs our span upsert under MLflow's `_bulk_upsert` (it applies only while our store
    runs log_spans: MLflow's store in the same process keeps its own) and returns the light
    experiment read; None, nothing installed, when MLflow's pieces are not the ones this was
    written for."""
    from mlflow.entities import Experiment, LifecycleStage, ViewType
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
    from mlflow.store.tracking import sqlalchemy_store as mlflow_store
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlSpan, SqlTraceInfo, SqlTraceTag

    parse_id = getattr(mlflow_store, "_parse_experiment_id", None)
    original = getattr(mlflow_store, "_bulk_upsert", None)
    needed = ("_log_spans_once", "_start_trace_once", "get_experiment", "DEFAULT_EXPERIMENT_ID",
              "_advance_db_payload_generations_for_db_span_writes", "_get_existing_trace_ids",
              "_get_trace_ids_outside_tracking_store", "_raise_log_spans_trace_write_conflict_error")
    tables = (SqlExperiment.__tablename__, SqlTraceInfo.__tablename__, SqlTraceTag.__tablename__)
    if (parse_id is None or original is None or tables != ("experiments", "trace_info", "trace_tags")
            or "db_payload_generation" not in SqlTraceInfo.__table__.columns
            or not all(hasattr(mlflow_store.SqlAlchemyStore, name) for name in needed)):
        return None
    if not getattr(original, "mlflow_gcp", False):

        def _bulk_upsert(session, model_class, rows):
            if (rows and model_class is SqlSpan and trace_writes.writing()
                    and session.bind.dialect.name == "postgresql"):
                # as session.execute would: merges held by our session go first
                if (flush_held := getattr(session, "_flush_held", None)) is not None:
                    flush_held()
                _insert_rows(session, *trace_writes.upsert_statements(SqlSpan.__table__, rows))
                return None
            return original(session, model_class, rows)

        _bulk_upsert.mlflow_gcp = True
        mlflow_store._bulk_upsert = _bulk_upsert
    stages = LifecycleStage.view_type_to_stages(ViewType.ALL)

    def light_experiment(store, experiment_id):
        """MLflow's get_experiment's answer without the experiment's tags, or its error."""
        with store.ManagedSessionMaker() as session:
            return experiment_in(session, experiment_id or store.DEFAULT_EXPERIMENT_ID)

    def experiment_in(session, experiment_id):
        """light_experiment's answer read on `session`."""
        experiment_id = parse_id(experiment_id)
        row = _execute_plain(session, trace_writes.EXPERIMENT_ROW, (experiment_id, stages)).first()
        if row is None:
            raise MlflowException(f"No Experiment with id={experiment_id} exists", RESOURCE_DOES_NOT_EXIST)
        name, artifact_location, stage, created, updated = row
        return Experiment(str(experiment_id), name, artifact_location, stage, tags=None,
                          creation_time=created, last_update_time=updated)

    light_experiment.in_session = experiment_in
    return light_experiment


_VALUE = itemgetter(1)  # of a row in COLUMNS order


def sanitized(rows: list[tuple], sanitize) -> list[tuple]:
    """`rows` (COLUMNS order, is_nan False) with each value that is not finite replaced as
    MLflow's `sanitize_metric_value` replaces it (NaN: 0 and is_nan; the infinities: the
    largest doubles)."""
    out = []
    for key, value, timestamp, step, is_nan, run_uuid in rows:
        if value - value != 0.0:
            is_nan, value = sanitize(value)
        out.append((key, value, timestamp, step, is_nan, run_uuid))
    return out


def metric_statements(metrics: str, latest: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """(head, tail) of the multi-row metrics insert and of the latest-metrics upsert, for the
    tables `metrics` and `latest` (MLflow's model table names; bench/pglimit.py writes the same)."""
    names = ", ".join(f'"{c}"' for c in COLUMNS)
    insert_metrics = (f"INSERT INTO {metrics} ({names})", "ON CONFLICT DO NOTHING")
    upsert_latest = (
        f"INSERT INTO {latest} ({names})",
        'ON CONFLICT ("key", "run_uuid") DO UPDATE SET '
        '"value" = EXCLUDED."value", "timestamp" = EXCLUDED."timestamp", "step" = EXCLUDED."step", '
        '"is_nan" = EXCLUDED."is_nan" WHERE (EXCLUDED."step", EXCLUDED."timestamp", EXCLUDED."value") > '
        f'({latest}."step", {latest}."timestamp", {latest}."value")',
    )
    return insert_metrics, upsert_latest


def metric_inserts(rows: list[tuple], statements) -> tuple[tuple, tuple]:
    """(head, tail, rows) of both writes of `rows` (COLUMNS order), with `metric_statements`."""
    insert_metrics, upsert_latest = statements
    ordered, latest = metric_rows(rows)
    return (*insert_metrics, ordered), (*upsert_latest, latest)


def metric_rows(rows: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """The rows of both writes of `rows`: all of them for metrics, the latest per key for
    latest_metrics, each in the one order every writer uses."""
    # Per key, the first of the greatest (step, timestamp, value): MLflow's loop replaces its
    # candidate only on strictly greater.
    latest: dict[str, tuple] = {}
    for row in rows:
        best = latest.get(row[0])
        if best is None or (row[3], row[2], row[1]) > (best[3], best[2], best[1]):
            latest[row[0]] = row
    # One order for every writer (metrics by their primary key, latest rows by key): two batches
    # over the same keys then wait for each other instead of deadlocking. 1,000 metrics, MLflow's
    # batch limit, make one statement each; both go in one round trip.
    return sorted(rows, key=_metric_pk), [latest[k] for k in sorted(latest)]


def _metric_pk(row: tuple) -> tuple:
    """A metrics row's primary key (key, timestamp, step, run_uuid, value, is_nan)."""
    key, value, timestamp, step, is_nan, run_uuid = row
    return key, timestamp, step, run_uuid, value, is_nan


class MetricWrite(NamedTuple):
    """The run check and both metric writes as one server-side prepared statement."""

    name: str
    prepare: str  # PREPARE name (types) AS ...: once per connection
    execute: str  # EXECUTE name (%s, ...): the run id, then five arrays per table


def metric_write(metrics: str, latest: str, runs: str, active: str) -> MetricWrite:
    """The guarded write of `_insert_rows` (the run check as a CTE, then each insert as a
    data-modifying CTE that writes only if the run's state is `active`, the second after the
    first), for the tables `metrics`, `latest` and `runs`, with the rows as column arrays and
    the conflict clauses of `metric_statements`. bench/pglimit.py writes the same.

    Why: PostgreSQL parses and plans it once per connection instead of a 600-value statement
    per batch, and the client sends five array literals per table instead of rendering each
    value (issue 17: per 100-metric batch, rendering the VALUES was ~0.8 ms of the server's
    CPU and parsing them a share of PostgreSQL's)."""
    (_, insert_tail), (_, upsert_tail) = metric_statements(metrics, latest)
    names = ", ".join(f'"{c}"' for c in COLUMNS)
    passes = f"WHERE EXISTS (SELECT FROM guard WHERE state = '{active}')"
    body = (
        f"WITH guard(state) AS (SELECT lifecycle_stage FROM {runs} WHERE run_uuid = $1),\n"
        f"w0 AS (INSERT INTO {metrics} ({names}) SELECT k, v, t, s, n, $1 "
        f"FROM unnest($2, $3, $4, $5, $6) AS r(k, v, t, s, n) {passes} {insert_tail} RETURNING 1),\n"
        f"w1 AS (INSERT INTO {latest} ({names}) SELECT k, v, t, s, n, $1 "
        f"FROM unnest($7, $8, $9, $10, $11) AS r(k, v, t, s, n) {passes} AND (SELECT count(*) FROM w0) >= 0 "
        f"{upsert_tail} RETURNING 1)\n"
        "SELECT state FROM guard"
    )
    # The name carries the text's digest: a changed statement never meets an old preparation.
    name = "mlflow_gcp_metrics_" + hashlib.sha1(body.encode()).hexdigest()[:12]
    types = ", ".join(["varchar"] + ["text[]", "float8[]", "bigint[]", "bigint[]", "boolean[]"] * 2)
    return MetricWrite(name, f"PREPARE {name} ({types}) AS {body}", f"EXECUTE {name} ({', '.join(['%s'] * 11)})")


def metric_write_params(run_id: str, rows: list[tuple], typed: bool = False) -> tuple | None:
    """The run id and the column arrays (as PostgreSQL array literals) of `metric_write` for
    `rows` (COLUMNS order, MLflow's sanitised values), in `metric_rows`' order; None unless
    every value has the type MLflow's protobuf parse gives it (a str key, a float value, or 0
    for NaN, int timestamp and step, a bool is_nan): other values (numpy numbers, an int value,
    a float step) are MLflow's to convert, as the rendered VALUES of `_insert_rows` do. With
    `typed`, the caller vouches for those types (log_metric_fields: the fast path's parse)."""
    params = [run_id]
    for part in metric_rows(rows):
        keys, values, stamps, steps, nans, _ = zip(*part)
        if not typed and not (set(map(type, keys)) == {str} and set(map(type, stamps)) == {int}
                              and set(map(type, steps)) == {int} and set(map(type, nans)) == {bool}):
            return None
        if not typed and set(map(type, values)) != {float} and not all(
                type(v) is float or (n and v == 0) for v, n in zip(values, nans)):
            return None
        params += [
            _text_array(keys),
            # + 0.0: -0.0 becomes 0.0, as PostgreSQL's numeric literal -0.0 does in MLflow's insert
            "{" + ",".join(map(repr, map((0.0).__add__, values))) + "}",
            _int_array(stamps),
            _int_array(steps),
            "{" + ",".join(["t" if n else "f" for n in nans] if any(nans) else ["f"] * len(nans)) + "}",
        ]
    return tuple(params)


# Per 100-metric batch these literals were ~half of the server's Python work on the write
# (issue 17); the usual batch (one `mlflow.log_metrics` call) has one timestamp, often one step,
# no NaN and no key that needs escaping, so each has a shortcut giving the same text.


def _text_array(keys: tuple[str, ...]) -> str:
    joined = '","'.join(keys)
    if "\\" not in joined and joined.count('"') == 2 * (len(keys) - 1):  # only the separators
        return '{"' + joined + '"}'
    return "{" + ",".join(['"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"' for k in keys]) + "}"


def _int_array(ints: tuple[int, ...]) -> str:
    if ints.count(ints[0]) == len(ints):
        return "{" + ",".join([str(ints[0])] * len(ints)) + "}"
    return "{" + ",".join(map(str, ints)) + "}"


class PooledScope:
    """One connection from `engine`'s pool, for MLflow's managed scope (its maker takes this as
    its session factory: its commit, rollback and translation of errors stay MLflow's), running
    the prepared metric write with psycopg2's cursor directly.

    Why: a SQLAlchemy Connection around the one statement (its transaction object, execution
    context and result) was ~0.1 ms of the server's ~1.05 ms of CPU per 100-metric log-batch
    (issue 17). What SQLAlchemy does on a failure is kept: a driver error is handed to a
    Connection over the same pooled connection, which wraps it in SQLAlchemy's error exactly as
    its own execute would (the same message, a disconnect invalidating the connection and the
    pool), and a failed checkout raises what `engine.connect()` raises. Engines with event
    listeners or statement logging get a plain Connection (`connect`) instead: those need it."""

    def __init__(self, engine):
        self.engine = engine
        self.pooled = None
        self._connection = None

    def __enter__(self):
        from sqlalchemy.engine import Connection

        engine = self.engine
        if engine._has_events or engine.dialect._has_events or engine._should_log_info():
            self._connection = engine.connect()
            self.pooled = self._connection.connection
            return self
        try:
            self.pooled = engine.raw_connection()
        except engine.dialect.loaded_dbapi.Error as err:
            Connection._handle_dbapi_exception_noconnection(err, engine.dialect, engine)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._connection is not None:
            self._connection.close()
        elif self.pooled is not None:
            self.pooled.close()  # back to the pool, which resets it (a rollback)

    def commit(self) -> None:
        if self._connection is not None:
            self._connection.commit()
        elif self.pooled.dbapi_connection is not None:
            self.pooled.dbapi_connection.commit()  # no round trip: nothing is open

    def rollback(self) -> None:
        if self._connection is not None:
            self._connection.rollback()
        elif self.pooled.dbapi_connection is not None:  # None once invalidated
            self.pooled.dbapi_connection.rollback()

    def execute_prepared(self, write: MetricWrite, params: tuple):
        """`write`'s first row with `params`, prepared on this connection first if it was not
        yet (kept in the pooled connection's `info`, which lives as long as its DBAPI
        connection). An error names the statement, not its 1,000 values."""
        from sqlalchemy.exc import DBAPIError

        info = self.pooled.info
        if write.name not in info:
            self._execute(write.prepare, None)
            info[write.name] = True
        try:
            return self._execute(write.execute, params)
        except DBAPIError as err:
            err.statement = f"EXECUTE {write.name} (<run id>, <column arrays>)"
            err.params = None
            raise

    def _execute(self, statement: str, params):
        if self._connection is not None:
            result = self._connection.exec_driver_sql(statement, params)
            return result.first() if result.returns_rows else None
        from sqlalchemy.engine import Connection

        # SQLAlchemy's handling of an error of its own execute, on this connection.
        return _on_cursor(self.pooled.dbapi_connection, self.engine.dialect,
                          lambda: Connection(self.engine, self.pooled), statement, params, _first_row)


_RUN_DATA = ("latest_metrics", "params", "tags")


def _empty_run_data(run, _context) -> None:
    if getattr(_SEARCHING, "on", False):
        from sqlalchemy.orm.attributes import set_committed_value

        for name in _RUN_DATA:
            set_committed_value(run, name, [])


def _light_search_options(run_model, lazyload) -> list:
    """Loader options under which the runs our search loads carry empty metrics, params and tags
    (filled afterwards by three plain queries) without a query per run. SQLAlchemy 2.1 deprecates
    `noload`: here the relationships stay lazy, and a run built from its row during our search
    gets them set as loaded and empty (SQLAlchemy's `load` event)."""
    from sqlalchemy import event

    if not event.contains(run_model, "load", _empty_run_data):
        event.listen(run_model, "load", _empty_run_data)
    return [lazyload(getattr(run_model, name)) for name in _RUN_DATA]
