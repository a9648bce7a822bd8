"""The log-metric and log-batch requests MLflow's own client sends take our fast path
(server/fastpath.py). The bodies are recorded from the installed MLflow client, not written here:
if an MLflow release changes what its client sends so that the fast path would decline it (as
`run_uuid` beside `run_id` once did), this fails. Answers are compared with stock MLflow in
tests/integration/test_differential.py."""

from __future__ import annotations

import json
import math

import pytest

from mlflow_gcp.server import fastpath

from tests.support.httpserver import BackgroundServer, QuietHandler

RUN_ID = "0123456789abcdef0123456789abcdef"
RUN = {"run": {"info": {"run_id": RUN_ID, "run_uuid": RUN_ID, "experiment_id": "0", "status": "RUNNING",
                        "lifecycle_stage": "active", "start_time": 1}, "data": {}}}


class Recorder(BackgroundServer):
    """Answers MLflow's client as a tracking server would for these calls; keeps each request."""

    def __init__(self):
        self.requests: list[tuple[str, list[tuple[bytes, bytes]], bytes]] = []

    class handler_class(QuietHandler):
        def _answer(self, body: bytes) -> None:
            path = self.path.split("?")[0]
            self.server.owner.requests.append(
                (path, [(k.lower().encode(), v.encode()) for k, v in self.headers.items()], body))
            self.send_body(200, json.dumps(RUN if path.endswith("/runs/get") else {}).encode(), "application/json")

        def do_POST(self):
            self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        def do_GET(self):
            self._answer(b"")


@pytest.fixture
def recorded(monkeypatch):
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    with Recorder() as server, _use_tracking_uri(server.url):  # the fluent API's calls too
        yield server


def metric_writes(recorder: Recorder) -> list[tuple[str, list, bytes]]:
    routes = fastpath._routes()
    return [(routes[path], headers, body) for path, headers, body in recorder.requests if path in routes]


def test_every_metric_write_of_mlflows_client_takes_the_fast_path(recorded):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(recorded.url)
    client.log_metric(RUN_ID, "loss", 0.5)
    client.log_metric(RUN_ID, "loss", 1, timestamp=5, step=3)
    for special in (float("nan"), float("inf"), float("-inf")):
        client.log_metric(RUN_ID, "edge", special, timestamp=6, step=-2)
    client.log_batch(RUN_ID, metrics=[Metric("a", 1.0, 5, 0), Metric("b", float("inf"), 6, 2)])
    client.log_batch(RUN_ID, metrics=[Metric(f"m{i % 7}", i / 3, 7, i) for i in range(1500)])  # 2 requests
    mlflow.log_metric("x", 2.0, run_id=RUN_ID)
    mlflow.log_metrics({"y": 3.0, "z": 4}, run_id=RUN_ID, step=2)
    client.log_metric(RUN_ID, "async", 8.0, timestamp=9, step=1, synchronous=False).wait()
    mlflow.log_metrics({"async2": 1.0}, run_id=RUN_ID, synchronous=False).wait()

    writes = metric_writes(recorded)
    kinds = [kind for kind, _, _ in writes]
    assert kinds.count("log_metric") == 6 and kinds.count("log_batch") >= 6, kinds
    for kind, headers, body in writes:
        plain = fastpath.plain_request(kind, headers, body)
        assert plain is not None, f"MLflow's client sent a {kind} the fast path declines: {body[:300]!r}"
        run_id, _fields = plain[1]
        assert run_id == RUN_ID
    # The shapes that mattered: run_uuid beside run_id, and the run id inside each metric.
    assert any(b'"run_uuid"' in body for kind, _, body in writes if kind == "log_metric")
    assert any(b'"run_id"' in body.split(b'"metrics"', 1)[-1] for kind, _, body in writes if kind == "log_batch")


def test_the_recorded_values_parse_as_mlflows_handler_reads_them(recorded):
    from mlflow import MlflowClient

    client = MlflowClient(recorded.url)
    client.log_metric(RUN_ID, "loss", float("nan"), timestamp=11, step=4)
    client.log_metric(RUN_ID, "loss", 3, timestamp=12)
    (_, headers, first), (_, _, second) = metric_writes(recorded)
    (_, (key, value, ts, step)) = fastpath.plain_request("log_metric", headers, first)[1]
    assert (key, ts, step) == ("loss", 11, 4) and math.isnan(value)
    assert fastpath.plain_request("log_metric", headers, second)[1] == (RUN_ID, ("loss", 3.0, 12, 0))


def test_mlflows_search_runs_bodies_take_the_search_front(recorded):
    """server/search.py's Front answers the search_runs POSTs MLflow's client sends."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    from mlflow_gcp.server import search

    client = MlflowClient(recorded.url)
    client.search_runs(["1"], "metrics.m0 >= 0", max_results=100, order_by=["metrics.m0 DESC"])  # issue 17's A
    client.search_runs(["1", "2"], max_results=100)  # B
    client.search_runs(["1"], run_view_type=ViewType.ALL, page_token="tok")
    searches = [(headers, body) for path, headers, body in recorded.requests if path.endswith("/runs/search")]
    assert [search.plain_search(headers, body) for headers, body in searches] == [
        (["1"], "metrics.m0 >= 0", "ACTIVE_ONLY", 100, ["metrics.m0 DESC"], None),
        (["1", "2"], "", "ACTIVE_ONLY", 100, [], None),
        (["1"], "", "ALL", 1000, [], "tok"),
    ]
