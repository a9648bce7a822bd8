"""The two trace ingest requests MLflow's client sends, taken past FastAPI: the OTLP span export
(server/otlp_ingest.py) and StartTraceV3 (server/flask_direct.py). Our server answers each as stock
MLflow does (status, body, content type) and leaves the same rows, for the plain requests these
take and for each kind they leave to MLflow's path; in process, the plain requests are answered
without MLflow's app and every other kind reaches MLflow's app with its body unchanged."""

from __future__ import annotations

import asyncio
import gzip
import json
import urllib.error
import urllib.request

import pytest

from mlflow_gcp.server import flask_direct, otlp_ingest
from mlflow_gcp.server import store as store_mod

from tests.integration.test_trace_ingest_rows import dump, resource, start_trace, trace_case
from tests.support.stock_server import stock_server

pytestmark = pytest.mark.slow

AGENT = "mlflow-python-client/3.17.2"
PROTOBUF = "application/x-protobuf"


def export_body(cases: range, base: int, service: str | None = None) -> bytes:
    """One ExportTraceServiceRequest with every span batch of `cases` (the rows test's shapes)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.CopyFrom(resource(service))
    scope = rs.scope_spans.add()
    for n in cases:
        for batch in trace_case(n, base)[1]:
            scope.spans.extend(batch)
    return request.SerializeToString()


def requests(exp: str) -> list[tuple[str, dict, bytes]]:
    """(name, headers, body): the client's plain export and each kind left to MLflow's path."""
    plain = {"Content-Type": PROTOBUF, "X-Mlflow-Experiment-Id": exp, "User-Agent": AGENT}
    return [
        ("plain", plain, export_body(range(0, 4), 0)),
        ("plain, charset and a known service", {**plain, "Content-Type": f"{PROTOBUF}; charset=utf-8"},
         export_body(range(4, 6), 0, service="claude-code")),
        ("plain, no user agent", {k: v for k, v in plain.items() if k != "User-Agent"}, export_body(range(6, 8), 0)),
        ("gzip", {**plain, "Content-Encoding": "gzip"}, gzip.compress(export_body(range(0, 3), 100))),
        ("run id", {**plain, "X-Mlflow-Run-Id": "0" * 32}, export_body(range(3, 5), 100)),
        ("unknown experiment", {**plain, "X-Mlflow-Experiment-Id": "987654"}, export_body(range(5, 6), 100)),
        ("no experiment header", {k: v for k, v in plain.items() if k != "X-Mlflow-Experiment-Id"},
         export_body(range(6, 7), 100)),
        ("not protobuf", plain, b"\x0a\xff\xff\xff\xff\x0fgarbage"),
        ("no resource spans", plain, b""),
        ("text content type", {**plain, "Content-Type": "text/plain"}, export_body(range(7, 8), 100)),
        ("workspace header", {**plain, "X-Mlflow-Workspace": "default"}, export_body(range(0, 1), 200)),
    ]


START_PATH = "/api/3.0/mlflow/traces"


def start_requests() -> list[tuple[str, dict, bytes]]:
    """StartTraceV3 posts MLflow's client does not send (it sends the plain ones, see starts())."""
    plain = {"Content-Type": "application/json", "User-Agent": AGENT}
    return [
        ("no trace", plain, b"{}"),
        ("not JSON", plain, b"{not json"),
        ("text content type", {**plain, "Content-Type": "text/plain"}, b"{}"),
        ("workspace header", {**plain, "X-Mlflow-Workspace": "default"}, b"{}"),
    ]


def starts(url: str, exp: str) -> list[dict]:
    """StartTraceV3 of the plain traces by MLflow's own client code (its RestStore): the answers."""
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.utils.rest_utils import MlflowHostCreds

    class Recording(RestStore):
        def start_trace(self, trace_info):
            answered = super().start_trace(trace_info)
            self.answers.append(answered.to_dict())
            return answered

    store = Recording(lambda: MlflowHostCreds(url))
    store.answers = []
    for n in range(8):
        trace_hex, _, info = trace_case(n, 0)
        start_trace(store, exp, trace_hex, info)
    return store.answers


def post(url: str, headers: dict, body: bytes, path: str = "/v1/traces") -> tuple[int, bytes, str]:
    req = urllib.request.Request(f"{url}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type")


def create_experiment(url: str) -> tuple[str, str]:
    """(id, artifact location) of a new experiment."""
    def call(path, doc=None):
        req = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=json.dumps(doc).encode() if doc else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    exp = call("experiments/create", {"name": "otlp"})["experiment_id"]
    return exp, call(f"experiments/get?experiment_id={exp}")["experiment"]["artifact_location"]


class _Tables:
    def __init__(self, uri: str):
        from sqlalchemy import create_engine

        self.engine = create_engine(uri)


def test_exports_are_answered_and_stored_as_mlflows(new_database, start_server, tmp_path_factory):
    stock_db, ours_db = new_database("mlflow_gcp_otlp_stock"), new_database("mlflow_gcp_otlp_ours")
    tmp = tmp_path_factory.mktemp("otlp")
    with stock_server(stock_db, tmp) as stock:
        ours = start_server({"DB_URI": ours_db, "ARTIFACT_ROOT": str(tmp / "ours-artifacts")})
        answers, tables = {}, {}
        for name, url, db in (("stock", stock.wait(), stock_db), ("ours", ours.url, ours_db)):
            exp, location = create_experiment(url)
            answers[name] = [(case, *post(url, headers, body)) for case, headers, body in requests(exp)]
            answers[name] += [(case, *post(url, headers, body, START_PATH)) for case, headers, body in start_requests()]
            answers[name].append(starts(url, exp))
            answers[name] = json.loads(json.dumps(answers[name], default=repr).replace(location, "ROOT"))
            tables[name] = dump(_Tables(db), location)
    assert answers["ours"] == answers["stock"]
    statuses = {case: status for case, status, *_ in answers["ours"][:-1]}
    assert statuses["plain"] == 200 and statuses["not protobuf"] == 400 and statuses["gzip"] == 200
    assert statuses["no trace"] == 400 and statuses["text content type"] == 400 and len(answers["ours"][-1]) == 8
    assert tables["ours"]["spans"] and tables["ours"] == tables["stock"]


class _MlflowApp:
    """Stands for MLflow's app behind: records what reaches it, answers 299."""

    def __init__(self):
        self.seen = []

    async def __call__(self, scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.seen.append((dict(scope["headers"]), body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


HOST = b"127.0.0.1:8080"


def call(app, headers: dict, body: bytes, chunk: int = 1 << 30, path: str = "/v1/traces") -> tuple[int, bytes, dict]:
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             # A Host header, as every HTTP/1.1 client sends: where uvicorn was imported before
             # mlflow.server in this process (as in the server, or after another test file),
             # MLflow's Flask app checks it before its handlers and refuses a request without one.
             "headers": [(b"host", HOST)]
             + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
             + [(b"content-length", str(len(body)).encode())], "root_path": "",
             "scheme": "http", "http_version": "1.1", "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 1)}
    parts = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    out = {"status": None, "body": b"", "headers": {}}

    async def receive():
        part = parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"], out["headers"] = message["status"], dict(message["headers"])
        else:
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], out["body"], out["headers"]


@pytest.fixture
def direct(new_database, tmp_path, monkeypatch):
    """(OtlpIngest in front of a recording stand-in for MLflow's app, our store it writes to)."""
    from mlflow.server import handlers
    from mlflow.server.fastapi_app import app as mlflow_app

    monkeypatch.setenv(store_mod.BULK_ENV, "1")
    store = store_mod.build_store(new_database("mlflow_gcp_otlp_direct"), str(tmp_path))
    monkeypatch.setattr(handlers, "_tracking_store", store)
    behind = _MlflowApp()
    app = flask_direct.wrap(otlp_ingest.wrap(behind, mlflow_app), mlflow_app)
    assert isinstance(app, flask_direct.FlaskDirect) and isinstance(app.app, otlp_ingest.OtlpIngest)
    try:
        yield app, behind, store
    finally:
        store.engine.dispose()


def test_the_plain_export_is_answered_here_and_the_rest_reaches_mlflows_app(direct):
    app, behind, store = direct
    exp = store.create_experiment("direct")
    cases = requests(exp)
    for name, headers, body in cases:
        status, answer, answer_headers = call(app, headers, body, chunk=1000)
        if name.startswith("plain"):
            assert (status, answer, behind.seen) == (200, b"", []), name
            assert answer_headers == {b"content-length": b"0", b"content-type": PROTOBUF.encode()}
        elif name == "unknown experiment":  # the store's error, answered as MLflow's handler does
            assert status == 404 and json.loads(answer)["error_code"] == "RESOURCE_DOES_NOT_EXIST"
            assert behind.seen == []
        else:
            assert status == 299, name
            sent = {k.lower().encode(): v.encode() for k, v in headers.items()}
            assert behind.seen.pop() == ({b"host": HOST, **sent, b"content-length": str(len(body)).encode()}, body), name
    from sqlalchemy import text

    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT count(DISTINCT trace_id) FROM spans WHERE experiment_id = :e"),
                              {"e": int(exp)}).scalar()
    assert stored == 8  # the three plain exports' traces
    # A body past the size read here (empty fields after the spans) reaches MLflow's app whole.
    padded = export_body(range(0, 1), 300) + b"\x12\x00" * otlp_ingest.fastpath.MAX_BODY
    status, _, _ = call(app, cases[0][1], padded, chunk=4096)
    assert status == 299 and behind.seen.pop()[1] == padded


def test_each_answer_is_its_own_message_the_layers_outside_can_add_headers_to(direct):
    """The 200 answer is built once; a layer outside that adds headers in place to the message
    (as Starlette's MutableHeaders(scope=message) does) must not change the next answer."""
    app, _, store = direct
    exp = store.create_experiment("answers")
    plain = requests(exp)[0][1]
    seen = []

    async def adding(scope, receive, send):
        async def add(message):
            if message["type"] == "http.response.start":
                message["headers"].append((b"x-added", b"1"))
                seen.append(list(message["headers"]))
            await send(message)

        await app(scope, receive, add)

    for n in range(3):
        assert call(adding, plain, export_body(range(n, n + 1), 500))[0] == 200
    assert seen == [[(b"content-length", b"0"), (b"content-type", PROTOBUF.encode()), (b"x-added", b"1")]] * 3


def start_body(trace_hex: str, exp: str, info: dict) -> bytes:
    """The StartTraceV3 body MLflow's client (RestStore.start_trace) sends for a trace."""
    from mlflow.entities import Trace, TraceData
    from mlflow.protos.service_pb2 import StartTraceV3
    from mlflow.utils.proto_json_utils import message_to_json

    class Capture:
        def start_trace(self, trace_info):
            self.body = message_to_json(StartTraceV3(trace=Trace(info=trace_info, data=TraceData(spans=[])).to_proto()))

    capture = Capture()
    start_trace(capture, exp, trace_hex, info)
    return capture.body.encode()


def test_start_trace_is_run_by_mlflows_flask_app_here_and_the_rest_reaches_mlflows_app(direct):
    app, behind, store = direct
    exp = store.create_experiment("starts")
    trace_hex, batches, info = trace_case(1, 500)
    headers = {"Content-Type": "application/json", "User-Agent": AGENT}
    status, answer, answer_headers = call(app, headers, start_body(trace_hex, exp, info), path=START_PATH)
    assert (status, behind.seen) == (200, [])
    assert answer_headers[b"content-type"] == b"application/json"
    assert json.loads(answer)["trace"]["trace_info"]["trace_id"] == f"tr-{trace_hex}"
    assert store.get_trace_info(f"tr-{trace_hex}").tags["case"] == "c1"
    status, answer, _ = call(app, headers, b"{}", path=START_PATH)  # MLflow's handler refuses it
    assert (status, json.loads(answer)["error_code"], behind.seen) == (400, "INVALID_PARAMETER_VALUE", [])
    for name, more in (("workspace", {"X-Mlflow-Workspace": "default"}), ("origin", {"Origin": "http://x"})):
        status, _, _ = call(app, {**headers, **more}, b"{}", path=START_PATH)
        assert status == 299 and behind.seen.pop()[1] == b"{}", name
    big = b"{" + b" " * (2 * otlp_ingest.fastpath.MAX_BODY) + b"}"
    status, _, _ = call(app, headers, big, chunk=4096, path=START_PATH)
    assert status == 299 and behind.seen.pop()[1] == big
