"""Which log-batch / log-metric bodies server/fastpath.py answers itself (the rest go to MLflow)
and that it finds MLflow's routes and security middleware. Answers are compared with stock
MLflow in tests/integration/test_differential.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_gcp.server import fastpath

T = 1_700_000_000_000


def batch(*metrics, **top):
    return {"run_id": "r1", "metrics": list(metrics), **top}


def test_plain_batch_becomes_metric_fields_as_protobuf_parses_them():
    doc = batch({"key": "a", "value": 1, "timestamp": T, "step": 3}, {"key": "b", "value": 0.5, "timestamp": T},
                {"key": "c", "value": "NaN", "timestamp": T}, {"key": "c", "value": "-Infinity", "timestamp": T},
                params=[], tags=[])
    run_id, fields = fastpath.parse_log_batch(doc)
    assert run_id == "r1"
    assert fields[:2] == [("a", 1.0, T, 3, None), ("b", 0.5, T, 0, None)]
    assert type(fields[0][1]) is float
    assert fields[2][1] != fields[2][1] and fields[3][1] == float("-inf")


@pytest.mark.parametrize("doc", [
    batch({"key": "a", "value": "1.5", "timestamp": T}),
    batch({"key": "a", "value": True, "timestamp": T}),
    batch({"key": "a", "value": float("nan"), "timestamp": T}),
    batch({"key": "a", "value": 2**53 + 1, "timestamp": T}),
    batch({"key": "a", "value": 1, "timestamp": str(T)}),
    batch({"key": "a", "value": 1, "timestamp": T, "step": 1.0}),
    batch({"key": "a", "value": 1, "timestamp": T, "step": 2**63}),
    batch({"key": "a", "value": 1}),
    batch({"key": "", "value": 1, "timestamp": T}),
    batch({"key": "a", "value": 1, "timestamp": T, "model_id": "m"}),
    batch({"key": "a", "value": 1, "timestamp": T}, params=[{"key": "p", "value": "v"}]),
    batch(tags=[{"key": "t", "value": "v"}]),
    batch(extra=1),
    {"metrics": []},
    {"run_id": "", "metrics": []},
    {"run_id": "r1", "metrics": {}},
    [1],
    '{"run_id": "r1"}',
])
def test_anything_but_the_plain_batch_shape_is_left_to_mlflow(doc):
    assert fastpath.parse_log_batch(doc) is None


_FINITE = st.floats(allow_nan=False, allow_infinity=False)
_INT64 = st.integers(-2**63, 2**63 - 1)
_ODD = st.sampled_from([-2**63 - 1, 2**63, 1.0, "1", True, None, "", float("nan"), float("inf"), 2**53 + 1,
                        "NaN", "Infinity", "-Infinity", "1.5"])


def _mostly(valid):
    # The client's values most of the time; now and then one MLflow's parse refuses or the fast
    # path leaves to MLflow.
    return st.one_of(valid, valid, valid, valid, valid, _ODD)


_METRIC = st.fixed_dictionaries(
    {"key": _mostly(st.text(max_size=3)),  # "" now and then: MLflow refuses an empty key
     "value": _mostly(st.one_of(_FINITE, st.integers(-2**53, 2**53))),
     "timestamp": _mostly(_INT64)},
    optional={"step": _mostly(_INT64), "run_id": st.sampled_from(["r1", "r1", "r1", "r2", None])})


@settings(max_examples=2000, deadline=None)
@given(st.lists(_METRIC, min_size=1, max_size=3))
def test_the_batch_parse_takes_each_metric_as_the_single_metric_parse_does(metrics):
    # parse_log_batch inlines _metric_fields (it runs on every log-batch request): the two must not drift.
    each = [fastpath._metric_fields(m, "r1") for m in metrics]
    want = None if None in each else ("r1", each)
    got = fastpath.parse_log_batch(batch(*metrics))
    assert repr(got) == repr(want)  # repr: NaN values compare equal as text


def test_plain_log_metric_and_what_is_left_to_mlflow():
    plain = {"run_id": "r1", "key": "loss", "value": 2, "timestamp": T, "step": 4}
    assert fastpath.parse_log_metric(plain) == ("r1", ("loss", 2.0, T, 4))
    assert fastpath.parse_log_metric({**plain, "value": "Infinity"})[1][1] == float("inf")
    # MLflow's client sends the deprecated run_uuid beside run_id; its handler uses run_id.
    assert fastpath.parse_log_metric({"run_uuid": "r1", **plain}) == ("r1", ("loss", 2.0, T, 4))
    for other in ({**plain, "model_id": "m"}, {**plain, "run_uuid": "r2"}, {**plain, "run_uuid": 1},
                  {**plain, "value": "2"}, {k: v for k, v in plain.items() if k != "run_id"},
                  {"run_uuid": "r1", **{k: v for k, v in plain.items() if k != "run_id"}},
                  {**plain, "dataset_name": "d"}, {**plain, "run_id": "r1", "metrics": []}):
        assert fastpath.parse_log_metric(other) is None


def test_a_metrics_own_run_id_is_kept_when_it_is_the_batchs():
    # mlflow.log_metrics puts the run id in every metric; MLflow's handler keeps it on the Metric.
    run_id, fields = fastpath.parse_log_batch(batch({"key": "a", "value": 1, "timestamp": T, "run_id": "r1"},
                                                    {"key": "b", "value": 2, "timestamp": T}))
    assert fields == [("a", 1.0, T, 0, "r1"), ("b", 2.0, T, 0, None)]
    for other in ("r2", "", 7, None):
        assert fastpath.parse_log_batch(batch({"key": "a", "value": 1, "timestamp": T, "run_id": other})) is None


@pytest.mark.parametrize(("headers", "taken"), [
    ([(b"content-type", b"application/json")], True),
    ([(b"content-type", b"application/json; charset=utf-8")], True),
    ([(b"content-type", b"text/plain")], False),
    ([], False),
    ([(b"content-type", b"application/json"), (b"content-type", b"application/json")], False),
    ([(b"content-type", b"application/json"), (b"origin", b"http://localhost:5000")], False),
])
def test_plain_request_decides_on_headers_as_well(headers, taken):
    body = b'{"run_id": "r1", "metrics": [{"key": "a", "value": 1, "timestamp": 5}]}'
    assert (fastpath.plain_request("log_batch", headers, body) is not None) is taken


def test_routes_come_from_mlflows_url_map(monkeypatch):
    monkeypatch.delenv("MLFLOW_ENABLE_WORKSPACES", raising=False)
    paths = fastpath._routes()
    assert paths == {
        "/api/2.0/mlflow/runs/log-batch": "log_batch", "/ajax-api/2.0/mlflow/runs/log-batch": "log_batch",
        "/api/2.0/mlflow/runs/log-metric": "log_metric", "/ajax-api/2.0/mlflow/runs/log-metric": "log_metric",
    }
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    assert fastpath._routes() is None
