"""search_runs answered as JSON written straight from the store's rows: the same bytes our server
answered before (MLflow's values in MLflow's compact layout, server/app.py `compact_json`),
without building a protobuf message per run, metric, param and tag.

Why: for a 100-run page with 10 params, 10 tags and 10 metrics per run, MLflow's handler turns
~3,000 rows into entities, then protobuf messages, then a dict (server/jsonout.py), then JSON;
that conversion was about a third of the server's CPU per answer. Here MLflow's own store code
still parses the request, builds and runs the query (filters, order, paging, view type) and
loads the runs and their inputs/outputs; only the per-item work is replaced: the runs' latest
metrics, params and tags come from the store's three plain queries (server/store.py) and are
written as text in the order and shape MLflow's printer gives (proto field order, empty fields
left out, int64 as numbers, NaN and infinities as strings, unset tag values left out; `data`,
`inputs` and `outputs` always present, `{}` when empty), strings by json's own C writer and
doubles as json.dumps writes them.

A run's info values of unusual types, and any run with dataset inputs or model inputs/outputs,
are printed by MLflow's own `to_proto` and server/jsonout.py's walk, so they are exactly what they
were. A metric row with a NULL timestamp or step (MLflow fails on those) sends the whole request
down MLflow's own path. GraphQL calls of MLflow's `search_runs_impl` are untouched: only the
REST view (both its /api and /ajax-api paths) sets the flag this path answers under.

`Front` answers the plain POST MLflow's client sends (the proto's field names, each value of the
type protobuf's parse and MLflow's schema take as is, a plain JSON content type, no Origin) on
the ASGI side, with the same store call and text, so such a search skips the WSGI bridge's
thread hop and body plumbing, Flask's dispatch and the protobuf parse (~16% of the server's
CPU per 100-run answer: docs/benchmarks.md). The guard, the caller check, compression and the
concurrency limit around it still run; any other body or method, a store error or a refusal
(MLflow words it) goes to MLflow's view with the body replayed.
tests/integration/test_differential.py compares the raw answers with stock MLflow's.
"""

from __future__ import annotations

import functools
import json
import sys
import threading

from json.encoder import encode_basestring_ascii as _str  # json.dumps' own string writer

from mlflow_gcp.server import view_swap

_VIEW = threading.local()  # .on while MLflow's REST search_runs view runs in this thread
_STATUSES = frozenset(("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"))
_INF = float("inf")
_NAN = '"NaN"'  # NaN is stored as 0.0 with is_nan


class Answer:
    """A finished JSON answer, passed through MLflow's handler in place of its response message
    (server/jsonout.py's message_to_json returns `text` as it is)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


class Fallback(Exception):
    """This request goes down MLflow's own path."""


def _double(value) -> str:
    if type(value) is not float:
        raise Fallback("metric value")
    if value != value:
        return '"NaN"'
    if value in (_INF, -_INF):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    return repr(value)  # json.dumps' own float text


def _metrics(rows) -> str:
    out = []
    for _, key, value, timestamp, step, is_nan in rows:
        if type(timestamp) is not int or type(step) is not int:
            raise Fallback("metric timestamp or step")
        out.append(f'{{"key":{_str(key)},"value":{_NAN if is_nan else _double(value)},'
                   f'"timestamp":{timestamp},"step":{step}}}')
    return ",".join(out)


def _pairs(rows) -> str:
    # MLflow builds Param/RunTag protos with key= and value= keywords: a None value stays unset.
    return ",".join([f'{{"key":{_str(key)}}}' if value is None else f'{{"key":{_str(key)},"value":{_str(value)}}}'
                     for _, key, value in rows])


def info_dict(info) -> dict:
    """RunInfo.to_proto() as jsonout prints it, for a RunInfo of the types the store gives."""
    run_id, experiment_id, user_id = info.run_id, info.experiment_id, info.user_id
    start, end, uri, stage, name = info.start_time, info.end_time, info.artifact_uri, info.lifecycle_stage, info.run_name
    if not (type(run_id) is str and type(experiment_id) is str and type(user_id) is str and type(stage) is str
            and info.status in _STATUSES and type(start) is int and (end is None or type(end) is int)
            and (uri is None or type(uri) is str) and (name is None or type(name) is str)):
        return _proto_dict(info.to_proto())
    out = {"run_uuid": run_id, "experiment_id": experiment_id}
    if name is not None:
        out["run_name"] = name
    out["user_id"] = user_id
    out["status"] = info.status
    out["start_time"] = start
    if end:
        out["end_time"] = end
    if uri:
        out["artifact_uri"] = uri
    out["lifecycle_stage"] = stage
    out["run_id"] = run_id
    return out


def _proto_dict(message) -> dict:
    from mlflow_gcp.server.jsonout import message_to_dict

    out = message_to_dict(message)
    if out is None:
        raise Fallback(message.DESCRIPTOR.full_name)
    return out


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def run_json(run, metrics, params, tags) -> str:
    """One run of the answer as compact JSON: `run` is MLflow's Run entity (info, inputs,
    outputs; its data is not read), the rest the rows of the store's data queries for it."""
    data = []
    if metrics:
        data.append(f'"metrics":[{_metrics(metrics)}]')
    if params:
        data.append(f'"params":[{_pairs(params)}]')
    if tags:
        data.append(f'"tags":[{_pairs(tags)}]')
    inputs, outputs = run.inputs, run.outputs
    has_inputs = inputs is not None and (inputs.dataset_inputs or inputs.model_inputs)
    has_outputs = outputs is not None and outputs.model_outputs
    return (f'{{"info":{_json(info_dict(run.info))},"data":{{{",".join(data)}}},'
            f'"inputs":{_json(_proto_dict(inputs.to_proto())) if has_inputs else "{}"},'
            f'"outputs":{_json(_proto_dict(outputs.to_proto())) if has_outputs else "{}"}}}')


def answer_text(runs: list[str], token) -> str:
    """SearchRuns.Response's compact JSON for these runs (run_json) and page token."""
    out = []
    if runs:
        out.append(f'"runs":[{",".join(runs)}]')
    if token:
        out.append(f'"next_page_token":{_str(token.decode("utf-8") if isinstance(token, bytes) else token)}')
    return "{" + ",".join(out) + "}"


def _search_runs_impl(original):
    """MLflow's search_runs_impl, answered as JSON from the bulk store inside the REST view."""

    @functools.wraps(original)
    def search_runs_impl(request_message):
        if not getattr(_VIEW, "on", False):
            return original(request_message)  # GraphQL and any other caller
        from mlflow.entities import ViewType
        from mlflow.server.handlers import _get_tracking_store

        # MLflow's search_runs_impl up to the store call, line for line (its auth step in store_answer).
        run_view_type = ViewType.ACTIVE_ONLY
        if request_message.HasField("run_view_type"):
            run_view_type = ViewType.from_proto(request_message.run_view_type)
        filter_string = request_message.filter
        max_results = request_message.max_results
        experiment_ids = list(request_message.experiment_ids)
        order_by = request_message.order_by
        text = store_answer(_get_tracking_store(), experiment_ids, filter_string, run_view_type, max_results,
                            order_by, request_message.page_token or None)
        return original(request_message) if text is None else Answer(text)

    return search_runs_impl


def store_answer(store, experiment_ids, filter_string, run_view_type, max_results, order_by, page_token):
    """The answer's JSON text from `store.search_runs_answer` for the parts of MLflow's request
    message, after MLflow's auth step (search_runs_impl's); None where that store has none."""
    answer = getattr(store, "search_runs_answer", None)
    if answer is None:
        return None
    try:  # MLflow's code, line for line
        from mlflow.server import auth

        if auth.auth_config:
            experiment_ids = auth.filter_experiment_ids(experiment_ids)
    except ImportError:
        pass
    return answer(experiment_ids=experiment_ids, filter_string=filter_string, run_view_type=run_view_type,
                  max_results=max_results, order_by=order_by, page_token=page_token)


def _view(original):
    @functools.wraps(original)
    def view(*args, **kwargs):
        _VIEW.on = True
        try:
            return original(*args, **kwargs)
        finally:
            _VIEW.on = False

    return view


@view_swap.announced("search_runs answered from rows (server/search.py)", "search_runs JSON path off")
def install() -> bool:
    """Route MLflow's REST search_runs views through this path; False (nothing changed) where
    MLflow's pieces are not the expected ones. Call only once handlers.message_to_json is
    server/jsonout.py's (it passes an Answer through)."""
    from mlflow.server import handlers

    original_view = getattr(handlers, "_search_runs", None)
    original_impl = getattr(handlers, "search_runs_impl", None)
    if original_view is None or original_impl is None or getattr(original_impl, "__wrapped__", None):
        return False
    view = _view(original_view)
    if not view_swap.serve_with(original_view, view):
        return False
    handlers.search_runs_impl = _search_runs_impl(original_impl)
    _SWAPPED.append(view)
    return True


# The POST body MLflow's client sends (tests/unit/test_client_bodies.py), field by field: the
# proto name, and the check that the value is one protobuf's parse and MLflow's schema take as is.
_FIELDS = {
    "experiment_ids": lambda v: type(v) is list and all(type(x) is str for x in v),
    "filter": lambda v: type(v) is str,
    "run_view_type": lambda v: v in ("ACTIVE_ONLY", "DELETED_ONLY", "ALL"),
    "max_results": lambda v: type(v) is int and 0 < v <= 50000,  # MLflow's schema: <= 50000
    "order_by": lambda v: type(v) is list and all(type(x) is str for x in v),
    "page_token": lambda v: type(v) is str,
}
_SWAPPED: list = []  # the view install() put in MLflow's place


def plain_search(headers, body: bytes) -> tuple | None:
    """(experiment_ids, filter, run_view_type name or None, max_results or None, order_by,
    page_token or None) for a SearchRuns body of the plain shape, else None."""
    from mlflow_gcp.server.fastpath import plain_json_headers

    if not plain_json_headers(headers):
        return None
    try:
        doc = json.loads(body)  # Flask's get_json: json.loads of the body's bytes
    except ValueError:
        return None
    if type(doc) is not dict or not all(name in _FIELDS and _FIELDS[name](v) for name, v in doc.items()):
        return None
    return (doc.get("experiment_ids", []), doc.get("filter", ""), doc.get("run_view_type"), doc.get("max_results"),
            doc.get("order_by", []), doc.get("page_token") or None)


def _plain_answer(request) -> str | None:
    """In a worker thread: search_runs_impl's store call for a plain request, as JSON text; None
    (MLflow's path then answers, its errors included) for anything else."""
    from mlflow.entities import ViewType
    from mlflow.protos import service_pb2
    from mlflow.server.handlers import _get_tracking_store

    experiment_ids, filter_string, view, max_results, order_by, page_token = request
    message = service_pb2.SearchRuns()  # the defaults MLflow's handler reads from its message
    # protobuf's parse of the enum's name, then search_runs_impl's conversion
    run_view_type = ViewType.ACTIVE_ONLY if view is None else ViewType.from_proto(service_pb2.ViewType.Value(view))
    try:
        return store_answer(_get_tracking_store(), experiment_ids, filter_string, run_view_type,
                            message.max_results if max_results is None else max_results, order_by, page_token)
    except Exception:
        return None


class Front:
    """ASGI: a plain search_runs POST answered here (no WSGI bridge, Flask or protobuf parse),
    else `app` with the body replayed."""

    def __init__(self, app, paths: frozenset[str]):
        self.app, self.paths = app, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            from mlflow_gcp.server import fastpath

            body, more = await fastpath.read_body(receive)
            if body is None:
                return  # the client went away
            request = None if more else plain_search(scope["headers"], body)
            if request is not None:
                import anyio

                text = await anyio.to_thread.run_sync(_plain_answer, request)
                if text is not None:
                    await fastpath._send_json(send, 200, text.encode())
                    return
            receive = fastpath.replay(body, more, receive)
        await self.app(scope, receive, send)


def wrap(app):
    """`app` with plain search_runs POSTs in front, where install() put its view in MLflow's place
    (MLflow's POST paths to it: a static prefix is followed) and MLflow serves no workspaces and
    not artifacts only; else `app` itself."""
    paths = view_swap.view_paths(_SWAPPED[-1] if _SWAPPED else None, "POST")
    if not paths:
        return app
    print("INFO search_runs POSTs answered before Flask (server/search.py)", file=sys.stderr, flush=True)
    return Front(app, paths)
