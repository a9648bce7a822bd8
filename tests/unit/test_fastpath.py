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


# ------------------------------------------------ orjson's parse, where it is taken, is json's

_JSON_HEADERS = [(b"content-type", b"application/json")]
_BIG = st.one_of(st.integers(), st.sampled_from([2**63, 2**64, -2**63 - 1, 2**64 + 1, -2**64, 10**30]))
_NUMBER_TEXT = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,25})?([eE][-+]?[0-9]{1,3})?", fullmatch=True)


def _canonical(x):
    """`x` with every number tagged by its type and floats by their bits (-0.0 is not 0.0, NaN
    is NaN) and dicts as their items in order."""
    import struct

    if type(x) is float:
        return ("float", struct.pack("<d", x))
    if type(x) is dict:
        return ("dict", [(k, _canonical(v)) for k, v in x.items()])
    if type(x) in (list, tuple):
        return (type(x).__name__, [_canonical(v) for v in x])
    return (type(x).__name__, x)


def _both(kind, body, monkeypatch):
    got = fastpath.plain_request(kind, _JSON_HEADERS, body)
    with monkeypatch.context() as m:
        m.setattr(fastpath, "_orjson_loads", None)
        want = fastpath.plain_request(kind, _JSON_HEADERS, body)
    return _canonical(got), _canonical(want)


def _text(x, ascii_only):
    import json

    return json.dumps(x, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


_ANY_VALUE = st.one_of(st.floats(), _BIG, st.sampled_from(["NaN", "Infinity", "-Infinity", "1.5", True, None]))
_ANY_METRIC = st.fixed_dictionaries(
    {"key": st.text(max_size=3), "value": _ANY_VALUE, "timestamp": st.one_of(_INT64, _BIG)},
    optional={"step": st.one_of(_INT64, _BIG), "run_id": st.sampled_from(["r1", "r2"])})


def test_orjson_is_installed():
    assert fastpath._orjson_loads is not None  # else the comparisons below compare json with json


@settings(max_examples=1500, deadline=None)
@given(st.lists(_ANY_METRIC, min_size=1, max_size=4), st.booleans())
def test_a_batch_is_parsed_as_json_parses_it(metrics, ascii_only):
    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as monkeypatch:
        got, want = _both("log_batch", _text(batch(*metrics), ascii_only), monkeypatch)
    assert got == want


@settings(max_examples=1500, deadline=None)
@given(_NUMBER_TEXT, _NUMBER_TEXT, st.sampled_from(["log_batch", "log_metric"]))
def test_numbers_as_written_are_parsed_as_json_parses_them(value, timestamp, kind):
    import pytest as _pytest

    metric = f'"key": "a", "value": {value}, "timestamp": {timestamp}'
    body = (f'{{"run_id": "r1", "metrics": [{{{metric}}}]}}' if kind == "log_batch"
            else f'{{"run_id": "r1", "run_uuid": "r1", {metric}}}').encode()
    with _pytest.MonkeyPatch.context() as monkeypatch:
        got, want = _both(kind, body, monkeypatch)
    assert got == want


@pytest.mark.parametrize("body", [
    b'{"run_id": "r1", "metrics": [{"key": "a", "value": 18446744073709551616, "timestamp": 1}]}',
    b'{"run_id": "r1", "metrics": [{"key": "a", "value": -9223372036854775809, "timestamp": 1}]}',
    b'{"run_id": "r1", "metrics": [{"key": "a", "value": 1, "timestamp": 18446744073709551616}]}',
    b'{"run_id": "r1", "metrics": [{"key": "a", "value": 1e400, "timestamp": 1}]}',
    b'{"run_id": "r1", "metrics": [{"key": "a", "value": NaN, "timestamp": 1}]}',
    b'{"run_id": "r1", "metrics": [{"key": "\\ud800", "value": 1, "timestamp": 1}]}',
    b'\xef\xbb\xbf{"run_id": "r1", "metrics": [{"key": "a", "value": 1, "timestamp": 1}]}',
    '{"run_id": "r1", "metrics": [{"key": "a", "value": 1, "timestamp": 1}]}'.encode("utf-16"),
    b'{"run_id": "r1", "run_id": "r2", "metrics": [{"key": "a", "value": 1.5, "timestamp": 1}]}',
    b'{"run_id": "r1", "metrics": [{"key": "a", "value": 1.5, "timestamp": 1}]} ',
    b'{"run_id": "r1", "metrics": [{"key": "a", "value": 1.5, "timestamp": 1}]}x',
    b'{"run_id": "r1", "metrics": [{"key": "\xc0\x80", "value": 1.5, "timestamp": 1}]}',
])
def test_bodies_orjson_refuses_or_reads_otherwise_are_jsons(body, monkeypatch):
    got, want = _both("log_batch", body, monkeypatch)
    assert got == want


@pytest.mark.parametrize("values", [
    [0.5] * 99 + [2**64],  # one integer orjson turns into a float, among many small values
    [-0.5] * 99 + [-2**63 - 1],
    [2**62 + 0.0] * 99 + [2**64],
    [2**62 + 0.0] * 100,  # no such integer, though the magnitudes add up past 2**63
    ["NaN"] * 50 + [2**64] + ["Infinity"] * 49,
])
def test_a_long_batch_with_integers_orjson_converts_is_jsons(values, monkeypatch):
    metrics = [{"key": f"m{i % 10}", "value": v, "timestamp": T, "step": i} for i, v in enumerate(values)]
    got, want = _both("log_batch", _text(batch(*metrics), True), monkeypatch)
    assert got == want

