"""The two calls a training loop makes most, runs/log-batch and runs/log-metric, answered without
Starlette's WSGI bridge, Flask and protobuf, by the same tracking store call MLflow makes.

Why: for a 100-metric log-batch, MLflow's request path (a thread hop through the WSGI bridge,
two no-op BaseHTTPMiddleware layers, Flask's dispatch, JSON -> protobuf -> entities) costs more
CPU than the database work; on one Cloud Run vCPU that caps ingest. Here a request whose JSON has
exactly the plain shape MLflow's client sends (a run id, metrics with key, value, timestamp and
optional step; no params, tags, model or dataset fields) is turned into the very `Metric`
entities MLflow's handler builds and handed to the same `store.log_batch` / `store.log_metric`
in a worker thread, and answered `{}` as MLflow does (our bulk store takes a batch's fields as
they are, `log_metric_fields`, with MLflow's checks and outcome, without a Metric per value). The shapes are those MLflow's own client
sends, recorded from it in tests/integration/test_client_bodies.py: log-metric carries `run_uuid`
beside `run_id` (the same id), and `mlflow.log_metrics` puts the run id in every metric.
When the store raises MLflow's error, it is answered as MLflow's handler answers it (status,
JSON body, error log line), so a failed write is not run a second time.

Everything else goes to MLflow's app unchanged, body replayed: any other shape or type (strings
for numbers, NaN, extra fields, ids that disagree), an Origin header (CORS), a wrong content type,
and a store failure other than MLflow's error (MLflow then runs the same call and answers; the
store call is transactional and idempotent for metrics, so running it again changes nothing).
The guard around the whole app (server/guard.py: MLflow's own Host and CORS checks and security
headers) sees these requests before this does, as it sees every other. The
paths come from MLflow's Flask URL map, so a static prefix or renamed route is followed; with
workspaces or artifacts-only mode on, or if any of these MLflow pieces changes shape, nothing is
intercepted. tests/integration/test_differential.py compares answers with stock MLflow.
"""

from __future__ import annotations

import json
import sys
from operator import itemgetter

MAX_BODY = 1 << 20  # larger bodies (1,000 metrics are ~100 KB) are MLflow's to judge
_INT64 = (-(1 << 63), (1 << 63) - 1)
_EXACT_FLOAT = 1 << 53  # ints converted to double without rounding questions
_METRIC_FIELDS = frozenset(("key", "value", "timestamp", "step", "run_id"))


def _int64(x) -> bool:
    return type(x) is int and _INT64[0] <= x <= _INT64[1]


# How MLflow's client (protobuf JSON) writes the doubles JSON has no literal for.
_SPECIAL = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _double(x) -> float | None:
    """The double protobuf parses `x` into, for the forms MLflow's client sends; else None."""
    if type(x) is float:
        return x if x == x and x not in (float("inf"), float("-inf")) else None  # bare NaN: MLflow's
    if type(x) is int:
        return float(x) if -_EXACT_FLOAT <= x <= _EXACT_FLOAT else None
    return _SPECIAL.get(x) if type(x) is str else None


def _metric_fields(m, run_id: str) -> tuple[str, float, int, int, str | None] | None:
    """(key, value, timestamp, step, run id) as MLflow's protobuf parse yields them, or None.
    A metric's own run id (`mlflow.log_metrics` sends it) is accepted when it is `run_id`."""
    if type(m) is not dict or not m.keys() <= _METRIC_FIELDS:
        return None
    key, value, ts, step = m.get("key"), _double(m.get("value")), m.get("timestamp"), m.get("step", 0)
    if type(key) is not str or not key or value is None or not _int64(ts) or not _int64(step):
        return None
    own = m.get("run_id")
    if "run_id" in m and own != run_id:
        return None
    return key, value, ts, step, own


def parse_log_batch(doc) -> tuple[str, list[tuple]] | None:
    """(run_id, metric fields) for a plain metrics-only LogBatch body, else None."""
    if type(doc) is not dict or not doc.keys() <= {"run_id", "metrics", "params", "tags"}:
        return None
    run_id, metrics = doc.get("run_id"), doc.get("metrics", [])
    if type(run_id) is not str or not run_id or type(metrics) is not list:
        return None
    if doc.get("params", []) != [] or doc.get("tags", []) != []:
        return None
    # _metric_fields for each metric, inlined for the usual one (a finite float value, int
    # timestamp and step): a 100-metric batch is parsed on every request.
    out = []
    append = out.append
    low, high = _INT64
    for m in metrics:
        if type(m) is not dict or not m.keys() <= _METRIC_FIELDS:
            return None
        key, value, ts, step = m.get("key"), m.get("value"), m.get("timestamp"), m.get("step", 0)
        if type(value) is not float or value - value != 0.0:  # not finite (or not a float)
            value = _double(value)
        if (type(key) is not str or not key or value is None or type(ts) is not int or type(step) is not int
                or not (low <= ts <= high and low <= step <= high)):
            return None
        own = m.get("run_id")
        if "run_id" in m and own != run_id:
            return None
        append((key, value, ts, step, own))
    return run_id, out


def parse_log_metric(doc) -> tuple[str, tuple] | None:
    """(run_id, metric fields) for a plain LogMetric body, else None. MLflow's client sends the
    deprecated `run_uuid` beside `run_id`; MLflow's handler then uses `run_id`. Accepted only
    when both are the same id (anything else is not what a client sends: MLflow's to judge)."""
    if type(doc) is not dict or "run_id" not in doc:
        return None
    run_id = doc["run_id"]
    if type(run_id) is not str or not run_id or doc.get("run_uuid", run_id) != run_id:
        return None
    fields = _metric_fields({k: v for k, v in doc.items() if k not in ("run_id", "run_uuid")}, run_id)
    if fields is None:
        return None
    return run_id, fields[:4]


def plain_json_headers(headers) -> bool:
    """Whether these (lower-case name, value) byte headers are a plain JSON request's. MLflow's
    content type rule (server/validation.py): the part before ";" exactly. Repeated content
    types and any Origin (CORS) are MLflow's to judge."""
    types = [value for name, value in headers if name == b"content-type"]
    if len(types) != 1 or types[0].split(b";")[0] != b"application/json":
        return False
    return not any(name == b"origin" for name, _ in headers)


def plain_request(kind: str, headers, body: bytes) -> tuple[object, tuple] | None:
    """(JSON document, parsed fields) when a `kind` request ("log_batch" | "log_metric") with
    these (lower-case name, value) byte headers and this body is answered here, else None."""
    if not plain_json_headers(headers):
        return None
    parse = parse_log_batch if kind == "log_batch" else parse_log_metric
    doc = _fast_loads(body)
    if doc is not None:
        parsed = parse(doc)
        if parsed is None:  # json's document is not plain either (see _fast_loads)
            return None
        if not _converted_int(kind, parsed):
            return doc, parsed
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    parsed = parse(doc)
    return None if parsed is None else (doc, parsed)


try:
    from orjson import JSONDecodeError as _FastDecodeError
    from orjson import loads as _orjson_loads
except ImportError:  # not installed: json alone, same answers
    _orjson_loads = None

# 2**63: orjson turns an integer outside int64..uint64 (json: an int) into a float at least this
# large; a metric value that big is parsed again by json.
_CONVERTED = 9.223372036854775808e18
_VALUE = itemgetter(1)


def _fast_loads(body: bytes):
    """json.loads(body) by orjson (~a third of json's CPU for a 100-metric batch: ~0.12 ms less
    per request), or None where orjson refuses the body. orjson is stricter than json (NaN and
    Infinity literals, 1e400, lone surrogates, a BOM, UTF-16/32: refused), and gives the same
    values where both accept (tests/unit/test_fastpath.py compares them), except that an integer
    beyond 64 bits becomes a float (`_converted_int`). Anything refused or in doubt goes to json:
    plain_request's answer is json's. A document of orjson's that is not plain is not plain as
    json's either: the two differ only in such integers, a float where json has an int, and the
    parse refuses either where an int is wanted (timestamp, step: json's is past int64 there)
    and json's where a double is (a value: an int past 2**53)."""
    if _orjson_loads is None:
        return None
    try:
        return _orjson_loads(body)
    except _FastDecodeError:
        return None


def _converted_int(kind: str, parsed) -> bool:
    """Whether a metric value of `parsed` may be an integer orjson turned into a float (a
    timestamp or step so turned is no int: refused by the parse either way)."""
    fields = parsed[1] if kind == "log_batch" else [parsed[1]]
    # The sum of their magnitudes first, in C: a sum of non-negative doubles is at least its
    # largest term, and a NaN keeps it NaN, so a sum below the bound clears every value; only a
    # larger sum needs the loop. plain_request per 100-metric body: 88 -> 73 us (issue 17).
    if sum(map(abs, map(_VALUE, fields))) < _CONVERTED:
        return False
    return any(not -_CONVERTED < value < _CONVERTED for _, value, *_ in fields)


class FastWrites:
    """ASGI: POST log-batch / log-metric of the plain shape answered directly, else `app`."""

    def __init__(self, app, paths: dict[str, str], permit=None):
        self.app = app
        self.paths = paths  # URL path -> "log_batch" | "log_metric"
        # With permissions on, a permissions.FastPathCheck: may this caller update the run (its
        # `cached` answer at once, or a call that may query the permission store).
        # A refusal is MLflow's to answer (with its own 403), like any other fallback.
        self.permit = permit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            await self._handle(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _handle(self, scope, receive, send):
        body, more = await read_body(receive)
        if body is None:
            return  # the client went away
        if not more and await self._answer(scope, body, send):
            return
        await self.app(scope, replay(body, more, receive), send)

    async def _answer(self, scope, body: bytes, send) -> bool:
        """True when answered here; False leaves the request to MLflow."""
        kind = self.paths[scope["path"]]
        plain = plain_request(kind, scope["headers"], body)
        if plain is None:
            return False
        doc, parsed = plain
        import anyio
        from mlflow.exceptions import MlflowException

        try:
            if self.permit is not None:
                caller = scope.get("mlflow_gcp.caller")  # set by server/caller.py
                allowed = self.permit.cached(caller, parsed[0])  # usually known: no thread hop
                if allowed is None:
                    allowed = await anyio.to_thread.run_sync(self.permit, caller, parsed[0])
                if not allowed:
                    return False
            await anyio.to_thread.run_sync(self._write, kind, doc, parsed)
        except MlflowException as err:  # MLflow's handler would answer this error: so do we
            status, body = _mlflow_error_answer(err, kind)
            await _send_json(send, status, body)
            return True
        except Exception:  # MLflow runs it again and answers
            return False
        await _send_json(send, 200, b"{}")
        return True

    def _write(self, kind: str, doc: dict, parsed) -> None:
        from mlflow.entities import Metric
        from mlflow.server.handlers import _get_tracking_store
        from mlflow.utils.validation import _validate_batch_log_api_req

        store = _get_tracking_store()
        run_id, fields = parsed
        if kind == "log_batch":
            _validate_batch_log_api_req(doc)
            fast = getattr(store, "log_metric_fields", None)  # our store's (server/store.py)
            if fast is not None:
                fast(run_id, fields)
                return
            metrics = [Metric(key, value, ts, step, run_id=own) for key, value, ts, step, own in fields]
            store.log_batch(run_id=run_id, metrics=metrics, params=[], tags=[])
        else:
            # As MLflow's _log_metric: the metric carries the run id, the other ids are None.
            store.log_metric(run_id, Metric(*fields, None, None, None, run_id))


async def _send_json(send, status: int, body: bytes) -> None:
    # The headers Flask gives MLflow's JSON answers (the differential test compares them).
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _mlflow_error_answer(err, kind: str) -> tuple[int, bytes]:
    """Status and body of MLflow's handler for `err` (its `catch_mlflow_exception`), with the
    error line it logs for a 5xx."""
    import logging

    status = err.get_http_status_code()
    if status >= 500:
        logger = logging.getLogger("mlflow.server.handlers")
        debug = logger.isEnabledFor(logging.DEBUG)
        message = f"Error in _{kind}: {err}"
        if not debug:
            message += ". Set MLFLOW_LOGGING_LEVEL=DEBUG for traceback."
        logger.error(message, exc_info=err if debug else None)
    return status, err.serialize_as_json().encode()


async def read_body(receive) -> tuple[bytes | None, bool]:
    """(the request's body, whether more follows): read until its end or past MAX_BODY (then
    `more` is True and the rest is still to receive); (None, False) when the client went away."""
    chunks, size, more = [], 0, True
    while more and size <= MAX_BODY:
        message = await receive()
        if message["type"] != "http.request":
            return None, False
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
    return b"".join(chunks), more


def replay(body: bytes, more: bool, receive):
    """`receive` for the app behind: `body` (what was read) first, then the rest."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


def _routes() -> dict[str, str] | None:
    """MLflow's own POST paths for the two handlers, or None where they are not plain."""
    from mlflow.server import handlers

    from mlflow_gcp.server import view_swap

    paths = {path: kind for kind in ("log_batch", "log_metric")
             for path in view_swap.view_paths(getattr(handlers, f"_{kind}", None), "POST")}
    return paths if set(paths.values()) == {"log_batch", "log_metric"} else None


def wrap(app, permit=None):
    """`app` with the fast writes in front, or `app` itself where they cannot be exact."""
    try:
        paths = _routes()
    except Exception as err:  # an MLflow that changed shape: keep its own path for everything
        print(f"INFO fast log-batch/log-metric path off: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return app
    if not paths:
        return app
    return FastWrites(app, paths, permit)
