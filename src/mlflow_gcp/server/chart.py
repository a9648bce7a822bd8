"""The UI's chart request (`metrics/get-history-bulk-interval`) answered from one query.

Why: MLflow's store samples each run with two queries of its own (window functions over the
run's whole history, then its last point), one run after the other, and its handler turns every
sampled point into an entity, a protobuf message and JSON: for the UI's chart of 20 runs that is
40 queries and ~6,000 objects of each kind. Here one query samples every run at once, reading
the runs' steps from MLflow's index and then only the kept rows (for 4 runs or more, two such
queries, each for half of the runs, at the same time on two pooled connections when the pool
has room: SPLIT_MIN), and its rows are written as MLflow's compact JSON.

The sample is MLflow's (SqlAlchemyStore._sample_metric_history_single_run): per run, the rows
of the metric (within [start_step, end_step] if given) in the order step, timestamp, value,
is_nan are cut by NTILE(max_results) into buckets; the first row of each bucket is kept, except
that the run's last row replaces the last bucket's first (with fewer rows than buckets, every
row is kept). So: the first row of buckets 1..max_results-1, and the last row. Runs come in
the order the request names them, each run's points in that order.

Only a request of the plain shape is answered here (run_ids 1..100 times, all different;
metric_key once; optionally max_results in 1..2500, and start_step with end_step, start <= end;
each a canonical decimal; nothing else); anything else, and any database error, is MLflow's.
MLflow's store does not check that the runs exist (`_validate_run_accessible` is a no-op without
workspaces), so neither does this. tests/integration/test_differential.py compares the answers
with stock MLflow's.
"""

from __future__ import annotations

import json
import re
import threading
from urllib.parse import parse_qsl

from mlflow_gcp.server.history import metric_value

MAX_RUNS = 100  # MLflow's MAX_RUNS_GET_METRIC_HISTORY_BULK
MAX_RESULTS = 2500  # MLflow's MAX_RESULTS_PER_RUN, also its default
_FIELDS = frozenset(("run_ids", "metric_key", "max_results", "start_step", "end_step"))
_INT = re.compile(r"-?(0|[1-9][0-9]{0,17})\Z")

# Per run (in the request's order), without sorting or numbering the run's rows:
# 1. `a`, its steps in order (MLflow's index on run_uuid, key, step gives them sorted, from the
#    index alone once the table is vacuumed); total = cardinality(a). NTILE(n) gives its first
#    rem = total % n buckets q + 1 = total / n + 1 rows and the others q rows, so the kept
#    positions p are known from total alone: the first of buckets 1..n-1, and the last row.
# 2. The steps a[p + 1] of those positions, each once, and the rows of each such step alone: an
#    index lookup on (run_uuid, key, step) per kept step, kept a separate subquery (OFFSET 0) so
#    that the planner cannot make it one scan of the run's rows. `step = ANY(kept steps)` in one
#    scan was as fast on an analyzed table, but where the table has no statistics yet (a fresh
#    database, rows just bulk-loaded: the bench's chart row) the planner guessed one row per run
#    and filtered all of them instead: 0.28 s instead of 0.07 for 20 runs x 10,000 points.
#    This form: 0.08 s either way. Not a lookup, a sort and a limit per kept row either, which
#    cost a third more of the database's CPU.
# 3. Each row's position: the number of steps before its step (width_bucket, a binary search
#    of the sorted array) plus its rank among its step's rows in the remaining keys of the
#    order (timestamp, value, is_nan); kept where that position is one of step 1's, tested by
#    arithmetic (the first row of a bucket: a multiple of q + 1 among the first rem buckets,
#    of q past them, and not past bucket n - 1; or the last row; or every row when there are
#    fewer rows than buckets). A step repeated on kept positions has all its rows read once.
# OFFSET 0 keeps the planner from copying the array's subquery into every use of `a`. JIT is off
# for this query alone (SET LOCAL: until its transaction ends): the planner counts 1,000 kept
# rows per run, and past its cost threshold compiling took longer (15-80 ms) than the query.
# (%% is %.)
QUERY = f"""
SET LOCAL jit = off;
SELECT r.run_id, m."value", m."timestamp", m."step", m.is_nan
FROM unnest(%(runs)s::text[]) WITH ORDINALITY AS r(run_id, ord)
CROSS JOIN LATERAL (
  SELECT a, total, q, rem,
         ARRAY(SELECT a[p + 1]
               FROM (SELECT (b - 1) * q + least(b - 1, rem) AS p
                     FROM generate_series(1, least(total, %(n)s - 1)) AS b
                     UNION ALL
                     SELECT total - 1 WHERE total >= %(n)s) kept) AS kept_steps
  FROM (SELECT a, cardinality(a) AS total, cardinality(a) / %(n)s AS q, cardinality(a) %% %(n)s AS rem
        FROM (SELECT ARRAY(SELECT "step" FROM metrics WHERE run_uuid = r.run_id AND "key" = %(key)s {{range}}
                           ORDER BY "step") AS a
              OFFSET 0) run_steps
        OFFSET 0) counted
) s
CROSS JOIN LATERAL (
  SELECT "value", "timestamp", "step", is_nan, pos
  FROM (SELECT "value", "timestamp", "step", is_nan,
               CASE WHEN "step" = {-2**63} THEN 0 ELSE width_bucket("step" - 1, s.a) END
               + row_number() OVER (PARTITION BY "step" ORDER BY "timestamp", "value", is_nan) - 1 AS pos
        FROM (SELECT DISTINCT unnest(s.kept_steps) AS "step") kept
        CROSS JOIN LATERAL (SELECT "value", "timestamp", is_nan FROM metrics
                            WHERE run_uuid = r.run_id AND "key" = %(key)s AND "step" = kept."step"
                            OFFSET 0) rows) fetched
  WHERE CASE WHEN s.total < %(n)s OR pos = s.total - 1 THEN true
             WHEN pos < s.rem * (s.q + 1) THEN pos %% (s.q + 1) = 0
             ELSE (pos - s.rem * (s.q + 1)) %% s.q = 0 AND s.rem + (pos - s.rem * (s.q + 1)) / s.q <= %(n)s - 2 END
) m
ORDER BY r.ord, m.pos
"""
STEP_RANGE = 'AND "step" >= %(start)s AND "step" <= %(end)s'
# From this many runs on, the second half of the runs is read on a second pooled connection at
# the same time (class Second). Why: the query is most of the request's time and PostgreSQL's
# work per run is independent, so two backends (another CPU of the database) take it in about
# half the time; the CPU is the same. The bench's 20-run chart, A/B interleaved on 2 shared CPUs
# under load (load average 4-6): median 0.29 s instead of 0.37, server CPU 40 ms and PostgreSQL
# CPU 123 ms per request either way.
SPLIT_MIN = 4


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and _INT.match(text) else None


def parse(query_string: bytes) -> dict | None:
    """The request's run ids, key, sample size and step range, or None if it is not plain."""
    try:
        pairs = parse_qsl(query_string.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                          errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    runs = [value for name, value in pairs if name == "run_ids"]
    args = dict(pair for pair in pairs if pair[0] != "run_ids")
    if (len(args) + len(runs) != len(pairs) or not args.keys() <= _FIELDS or "metric_key" not in args
            or not args["metric_key"] or not 0 < len(runs) <= MAX_RUNS or len(set(runs)) != len(runs)
            or not all(runs)):
        return None
    n = _int(args.get("max_results", str(MAX_RESULTS)))
    start, end = _int(args.get("start_step")), _int(args.get("end_step"))
    if n is None or not 0 < n <= MAX_RESULTS or ("start_step" in args) != (start is not None):
        return None
    if ("start_step" in args) != ("end_step" in args) or ("end_step" in args) != (end is not None):
        return None
    if start is not None and (start > end or max(abs(start), abs(end)) >= 1 << 63):
        return None
    return {"runs": runs, "key": args["metric_key"], "n": n, "start": start, "end": end}


def sql(request: dict) -> str:
    return QUERY.replace("{range}", STEP_RANGE if request["start"] is not None else "")


def body(key: str, rows) -> bytes:
    """MLflow's compact JSON answer for the sampled (run_id, value, timestamp, step, is_nan) rows."""
    if not rows:
        return b"{}"
    key_json = json.dumps(key)
    runs: dict[str, str] = {}
    return ('{"metrics":[' + ",".join(
        f'{{"key":{key_json},"value":{metric_value(v, nan)},"timestamp":{ts},"step":{step},'
        f'"run_id":{runs.get(run) or runs.setdefault(run, json.dumps(run))}}}'
        for run, v, ts, step, nan in rows) + "]}").encode()


def rows(connection, request: dict) -> list[tuple]:
    """The sampled rows of `request`'s runs, in one query on a psycopg2 connection."""
    with connection.cursor() as cursor:
        cursor.execute(sql(request), request)
        return cursor.fetchall()


def read(connection, request: dict) -> bytes:
    """The whole answer's body, read in one query on a psycopg2 connection."""
    return body(request["key"], rows(connection, request))


def answer(store, request: dict) -> bytes:
    with store.ManagedSessionMaker() as session:
        connection = session.connection().connection.dbapi_connection
        runs = request["runs"]
        if len(runs) < SPLIT_MIN or not _spare_connection(store):
            return read(connection, request)
        half = (len(runs) + 1) // 2
        second = Second(store, {**request, "runs": runs[half:]})
        first = rows(connection, {**request, "runs": runs[:half]})
        return body(request["key"], first + second.rows(connection))


def _spare_connection(store) -> bool:
    """Whether the store's pool has room for a second connection now (ours already checked
    out) without waiting: an idle one or one it may open within its budgeted size. Never past
    pool_size (the budget's; the overflow is 0 there), never on a pool of one. Two connections
    for one request are within the worker's budget: server/app.py admits connections // 2
    database requests at a time (CONNECTIONS_PER_REQUEST, for MLflow's nested log_batch session)."""
    pool = store.engine.pool
    try:
        return pool.size() >= 2 and pool.checkedout() < pool.size()
    except (AttributeError, TypeError):  # not a QueuePool (NullPool, StaticPool, ...)
        return False


class Second:
    """The rows of `request` read on a second pooled connection in a thread, unless the caller
    gets there first: `rows` then reads them on the caller's connection (a checkout that had to
    wait for the pool is given up: never a wait on the pool, and so never two chart requests
    each holding one connection while waiting for another)."""

    def __init__(self, store, request: dict):
        self.request, self.lock, self.done = request, threading.Lock(), threading.Event()
        self.started = self.taken = False
        self.result: list[tuple] | None = None
        self.error: BaseException | None = None
        threading.Thread(target=self._read, args=(store,), daemon=True, name="mlflow-gcp-chart").start()

    def _read(self, store) -> None:
        try:
            with store.ManagedSessionMaker() as session:
                connection = session.connection().connection.dbapi_connection
                with self.lock:
                    if self.taken:
                        return
                    self.started = True
                self.result = rows(connection, self.request)
        except BaseException as err:  # noqa: BLE001 (handed to the caller's thread)
            self.error = err
        finally:
            self.done.set()

    def rows(self, connection) -> list[tuple]:
        with self.lock:
            self.taken = not self.started
        if self.taken:
            return rows(connection, self.request)
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result
