"""A metric's history (`metrics/get-history`) read in one query and streamed into its JSON answer;
the UI's chart request (`metrics/get-history-bulk-interval`) routed to server/chart.py the same way.

Why: MLflow's handler loads every point as an ORM object, turns each into an entity, then a
protobuf message, then a dict, then JSON; for a 100,000-point metric that is seconds of CPU and
the whole answer several times in memory. Here the same SQL (MLflow's filter, order, offset and
page size) runs on a server-side cursor, and each batch of rows is written as the JSON MLflow's
compact answer holds for it (`{"key":..,"value":..,"timestamp":..,"step":..}`, NaN and the
infinities as MLflow's strings, `next_page_token` from MLflow's own token functions) and sent
at once; a large answer is gzip-compressed on the way (server/compress.py).

Only a request of the plain shape (MLflow's client's: run_id, optionally the same run_uuid,
metric_key, max_results, page_token; each once, all well formed) on the PostgreSQL bulk store is
answered here; everything else, and any database error before the answer started, is MLflow's.
MLflow's store does not check that the run exists here (`_validate_run_accessible` is a no-op
without workspaces), so neither does this. tests/integration/test_differential.py compares the
answers with stock MLflow's.
"""

from __future__ import annotations

import json
import math
import sys
from urllib.parse import parse_qsl

BATCH = 5000  # rows per fetch from the server-side cursor and per body message
_FIELDS = frozenset(("run_id", "run_uuid", "metric_key", "max_results", "page_token"))
_INT32_MAX = (1 << 31) - 1
QUERY = ('SELECT "value", "timestamp", "step", is_nan FROM metrics WHERE run_uuid = %s AND "key" = %s '
         'ORDER BY "timestamp", "step", "value" OFFSET %s')


def parse(query_string: bytes) -> tuple[str, str, int | None, str | None] | None:
    """(run_id, metric_key, max_results, page_token) of a plain request, else None."""
    try:
        pairs = parse_qsl(query_string.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                          errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    args = dict(pairs)
    if len(args) != len(pairs) or not args.keys() <= _FIELDS:
        return None
    run_id, key = args.get("run_id", ""), args.get("metric_key", "")
    if not run_id or not key or args.get("run_uuid", run_id) != run_id:
        return None
    max_results = args.get("max_results")
    if max_results is not None:
        if not max_results.isascii() or not max_results.isdigit() or not 0 < int(max_results) <= _INT32_MAX:
            return None
        max_results = int(max_results)
    return run_id, key, max_results, args.get("page_token") or None


def metric_value(value: float, is_nan: bool) -> str:
    """A metric's value as MLflow's JSON writes it (NaN is stored as 0 with is_nan)."""
    if is_nan:
        return '"NaN"'
    if math.isinf(value):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    return repr(float(value))


def rows_json(key_json: str, rows) -> str:
    """The metrics of `rows` as MLflow's compact JSON writes them, comma-separated."""
    return ",".join(
        f'{{"key":{key_json},"value":{metric_value(v, nan)},"timestamp":{ts},"step":{step}}}' for v, ts, step, nan in rows
    )


class History:
    """ASGI: plain get-history and chart (bulk-interval) requests answered from one query each;
    others to `app`."""

    def __init__(self, app, histories: frozenset[str], charts: frozenset[str] = frozenset()):
        self.app, self.histories, self.charts = app, histories, charts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path in self.histories:
                request, answer = parse(scope.get("query_string", b"")), self._answer
            elif path in self.charts:
                from mlflow_gcp.server import chart

                request, answer = chart.parse(scope.get("query_string", b"")), self._chart
            else:
                request = None
            if request is not None:
                import anyio

                if await anyio.to_thread.run_sync(answer, request, send):
                    return
        await self.app(scope, receive, send)

    def _chart(self, request, send) -> bool:
        """In a worker thread: the whole chart answer, or False (nothing sent) for MLflow."""
        from anyio.from_thread import run as on_loop

        from mlflow_gcp.server import chart

        store = _bulk_store()
        if store is None:
            return False
        try:
            body = chart.answer(store, request)
        except Exception:
            return False  # MLflow runs its own read and answers, error included
        on_loop(send, {"type": "http.response.start", "status": 200,
                       "headers": [(b"content-type", b"application/json"),
                                   (b"content-length", str(len(body)).encode())]})
        on_loop(send, {"type": "http.response.body", "body": body})
        return True

    def _answer(self, request, send) -> bool:
        """In a worker thread: stream the answer and return True, or False (nothing sent) to
        leave the request to MLflow."""
        from anyio.from_thread import run as on_loop
        from mlflow.utils.search_utils import SearchUtils

        run_id, key, max_results, page_token = request
        store = _bulk_store()
        if store is None:
            return False
        try:
            offset = SearchUtils.parse_start_offset_from_page_token(page_token)
        except Exception:
            return False  # MLflow words the error
        sql = QUERY + (f" LIMIT {max_results + 1}" if max_results is not None else "")
        started = False
        try:
            with store.ManagedSessionMaker() as session:
                raw = session.connection().connection.dbapi_connection
                with raw.cursor(name="mlflow_gcp_history") as cursor:
                    cursor.execute(sql, (run_id, key, offset))
                    rows = cursor.fetchmany(BATCH)
                    key_json = json.dumps(key)
                    sent = 0
                    on_loop(send, {"type": "http.response.start", "status": 200,
                                   "headers": [(b"content-type", b"application/json")]})
                    started = True
                    if not rows:
                        on_loop(send, {"type": "http.response.body", "body": b"{}"})
                        return True
                    prefix = '{"metrics":['
                    while rows:
                        if max_results is not None and sent + len(rows) > max_results:
                            rows = rows[:max_results - sent]
                            more = None
                        else:
                            more = cursor.fetchmany(BATCH)
                        if rows:
                            sent += len(rows)
                            chunk = prefix + rows_json(key_json, rows)
                            prefix = ","
                            on_loop(send, {"type": "http.response.body", "body": chunk.encode(), "more_body": True})
                        rows = more
                    tail = "]"
                    if more is None:  # one row beyond the page: there is a next page
                        token = SearchUtils.create_page_token(offset + max_results)
                        if isinstance(token, bytes):  # as the protobuf string field takes it
                            token = token.decode("utf-8")
                        tail += f',"next_page_token":{json.dumps(token)}'
                    on_loop(send, {"type": "http.response.body", "body": (tail + "}").encode()})
            return True
        except Exception as err:
            if not started:
                return False  # MLflow runs the same read and answers, error included
            print(f"ERROR get-history stream cut: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            raise


def _bulk_store():
    """MLflow's tracking store where it is our PostgreSQL bulk store (the SQL here is its
    database's), else None."""
    from mlflow.server.handlers import _get_tracking_store

    store = _get_tracking_store()
    return store if type(store).__name__ == "BulkPostgresStore" else None


def _routes(name: str) -> frozenset[str]:
    """MLflow's GET paths for its handler `name`, or none where they are not plain."""
    from mlflow.server import handlers

    from mlflow_gcp.server import view_swap

    return view_swap.view_paths(getattr(handlers, name, None), "GET")


def wrap(app):
    """`app` with metric histories and charts in front, or `app` itself where they cannot be exact."""
    try:
        histories = _routes("_get_metric_history")
        charts = _routes("get_metric_history_bulk_interval_handler")
    except Exception as err:  # an MLflow that changed shape: its own path for everything
        print(f"INFO streamed metric history off: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return app
    return app if not histories and not charts else History(app, histories, charts)
