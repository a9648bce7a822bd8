"""The UI's chart request (`metrics/get-history-bulk-interval`) answered from one query.

Why: MLflow's store samples each run with two queries of its own (window functions over the
run's whole history, then its last point), one run after the other, and its handler turns every
sampled point into an entity, a protobuf message and JSON: for the UI's chart of 20 runs that is
40 queries and ~6,000 objects of each kind. Here one query samples every run at once and its
rows are written as MLflow's compact JSON.

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
from urllib.parse import parse_qsl

from mlflow_gcp.server.history import metric_value

MAX_RUNS = 100  # MLflow's MAX_RUNS_GET_METRIC_HISTORY_BULK
MAX_RESULTS = 2500  # MLflow's MAX_RESULTS_PER_RUN, also its default
_FIELDS = frozenset(("run_ids", "metric_key", "max_results", "start_step", "end_step"))
_INT = re.compile(r"-?(0|[1-9][0-9]{0,17})\Z")
_ORDER = '"step", "timestamp", "value", is_nan'

# Per run (in the request's order; LATERAL, so each run's rows are sorted alone), p is a row's
# 0-based position, total the run's row count and b its NTILE bucket, all from one window pass
# (the whole-partition frame lets count(*) share it). NTILE(n) gives its first total % n buckets
# total / n + 1 rows and the others total / n, so bucket b starts at the p below. (%% is %.)
QUERY = f"""
SELECT r.run_id, m."value", m."timestamp", m."step", m.is_nan
FROM unnest(%(runs)s::text[]) WITH ORDINALITY AS r(run_id, ord)
CROSS JOIN LATERAL (
  SELECT "value", "timestamp", "step", is_nan,
         row_number() OVER w - 1 AS p, count(*) OVER w AS total, ntile(%(n)s) OVER w AS b
  FROM metrics WHERE run_uuid = r.run_id AND "key" = %(key)s {{range}}
  WINDOW w AS (ORDER BY {_ORDER} ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
) m
WHERE m.p = m.total - 1
   OR (m.b < %(n)s AND m.p = (m.b - 1) * (m.total / %(n)s) + least(m.b - 1, m.total %% %(n)s))
ORDER BY r.ord, m.p
"""
STEP_RANGE = 'AND "step" >= %(start)s AND "step" <= %(end)s'


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


def read(connection, request: dict) -> bytes:
    """The whole answer's body, read in one query on a psycopg2 connection."""
    with connection.cursor() as cursor:
        cursor.execute(sql(request), request)
        rows = cursor.fetchall()
    return body(request["key"], rows)


def answer(store, request: dict) -> bytes:
    with store.ManagedSessionMaker() as session:
        return read(session.connection().connection.dbapi_connection, request)
