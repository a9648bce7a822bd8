"""server/trace_answers.py prints a stored span as MLflow prints `LazySpan.to_otel_proto()`
(MLflow 3.17.2's Span.from_dict, to_otel_proto, then message_to_json), on random stored spans."""

from __future__ import annotations

import base64
import json
import random

import pytest

from mlflow_gcp.server import jsonout, trace_answers

STRINGS = ["", "a", "é\u2028\"\\\n\t", "😀", "</script>", "\ud800x", "null", "1e999", "{not json"]


def json_value(rng, depth=0):
    kinds = ["none", "bool", "int", "bigint", "float", "special", "str"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds) if rng.random() < 0.3 else rng.choice(kinds[:1] + kinds[2:3] + kinds[4:5] + kinds[6:])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 2**53 + 1, 2**63 - 1, -(2**63)])
    if kind == "bigint":
        return rng.choice([2**63, -(2**63) - 1, 2**70])
    if kind == "float":
        return rng.choice([0.0, -0.0, 0.1 + 0.2, 1e300, 5e-324])
    if kind == "special":
        return rng.choice([float("nan"), float("inf"), float("-inf")])
    if kind == "str":
        return rng.choice(STRINGS)
    if kind == "list":
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(STRINGS + ["k", "k2"]): json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def attribute(rng):
    roll = rng.random()
    if roll < 0.7:
        return json.dumps(json_value(rng), allow_nan=True)  # how MLflow stores them
    if roll < 0.8:
        return rng.choice(STRINGS + [" 1 ", "[1] x", "\ufeff1", '"a"\n'])  # a raw string that may not be JSON
    return json_value(rng)  # a raw value (OTLP ingest of other producers)


def b64(rng, size):
    return base64.b64encode(bytes(rng.randrange(256) for _ in range(size))).decode()


def pick(rng, usual, odd):
    return rng.choice(odd) if rng.random() < 0.12 else rng.choice(usual)


def span_dict(rng):
    request_id = pick(rng, [json.dumps("tr-0123")], ["", "tr-raw"])
    attributes = {"mlflow.traceRequestId": request_id} if request_id or rng.random() < 0.5 else {}
    for _ in range(rng.randrange(5)):
        attributes[rng.choice(["mlflow.spanType", "mlflow.spanInputs", "k", "", "é", "\ud800"])] = attribute(rng)
    events = []
    for _ in range(rng.choice([0, 0, 1, 2])):
        event = {"name": rng.choice(STRINGS), "time_unix_nano": rng.choice([0, 1, 2**64 - 1, "12"])}
        if rng.random() < 0.7:
            event["attributes"] = {rng.choice(["exception.message", "", "é"]): rng.choice(STRINGS + [1, None, [1]])
                                   for _ in range(rng.randrange(3))}
        events.append(event)
    data = {
        "trace_id": pick(rng, [b64(rng, 16)], [base64.b64encode(bytes(16)).decode(), "0" * 32, b64(rng, 17)]),
        "span_id": pick(rng, [b64(rng, 8)], [b64(rng, 9), base64.b64encode(bytes(8)).decode()]),
        "parent_span_id": pick(rng, [None, b64(rng, 8)], ["", base64.b64encode(bytes(8)).decode()]),
        "name": pick(rng, ["root", "a", "é😀"], STRINGS + [None]),
        "start_time_unix_nano": pick(rng, [1, 1_700_000_000_000_000_000], [0, 2**64 - 1, "5", -1]),
        "end_time_unix_nano": pick(rng, [None, 1_700_000_000_000_000_001], [0, 2**64]),
        "events": events,
        "status": {"code": pick(rng, ["STATUS_CODE_OK", "STATUS_CODE_ERROR", "STATUS_CODE_UNSET"], ["OK"]),
                   "message": pick(rng, ["", "boom"], ["\ud800", 3])},
        "attributes": attributes,
        "links": pick(rng, [[]], [[{"trace_id": "tr-" + "0" * 32, "span_id": "0" * 16}]]),
    }
    if rng.random() < 0.1:
        del data["status"]["message"]
    if rng.random() < 0.05:
        data["context"] = {}  # the v2 schema
    return data


def mlflows(content: str):
    from mlflow.entities.span import LazySpan
    from mlflow.utils.proto_json_utils import message_to_json

    try:
        return message_to_json(LazySpan.from_stored_content(content).to_otel_proto(), pretty=False)
    except Exception as error:
        return error


def test_random_stored_spans_print_as_mlflows():
    from mlflow.entities.span import LazySpan

    rng = random.Random(11)
    fast = 0
    for n in range(3000):
        content = json.dumps(span_dict(rng))
        printed = trace_answers.span_json(LazySpan.from_stored_content(content))
        if printed is None:
            continue
        fast += 1
        expected = mlflows(content)
        assert not isinstance(expected, Exception), (n, content, expected)
        assert printed == expected, (n, content)
    assert fast > 600


@pytest.mark.parametrize("attributes", [
    {"mlflow.spanInputs": json.dumps({"q": "é", "n": 2**62, "x": [], "y": {}, "z": None})},
    {"mlflow.spanOutputs": json.dumps([1.5, float("nan"), True, "😀", [[]], {"": 1}])},
    {"mlflow.spanType": '"LLM"', "raw": "not json", "empty": "", "zero": 0},
])
def test_usual_spans_take_this_path_and_print_as_mlflows(attributes):
    from mlflow.entities.span import LazySpan

    data = {"trace_id": base64.b64encode(bytes(range(16))).decode(), "span_id": base64.b64encode(bytes(range(8))).decode(),
            "parent_span_id": None, "name": "root", "start_time_unix_nano": 1_700_000_000_000_000_000,
            "end_time_unix_nano": 1_700_000_001_000_000_000,
            "events": [{"name": "exception", "time_unix_nano": 5, "attributes": {"exception.message": "é"}}],
            "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
            "attributes": {"mlflow.traceRequestId": '"tr-1"', **attributes}}
    content = json.dumps(data)
    printed = trace_answers.span_json(LazySpan.from_stored_content(content))
    assert printed is not None
    assert printed == mlflows(content)


def test_a_materialised_span_goes_through_mlflow():
    from mlflow.entities.span import LazySpan

    data = {"trace_id": base64.b64encode(bytes(16)).decode(), "span_id": base64.b64encode(bytes(range(8))).decode(),
            "parent_span_id": None, "name": "r", "start_time_unix_nano": 1, "end_time_unix_nano": 2, "events": [],
            "status": {"code": "STATUS_CODE_OK", "message": ""}, "attributes": {"mlflow.traceRequestId": '"tr-1"'}}
    span = LazySpan.from_stored_content(json.dumps(data))
    assert span.name == "r"  # materialises it
    assert trace_answers.span_json(span) is None


def test_answer_text_is_mlflows_for_traces_with_and_without_spans():
    from mlflow.entities import Trace, TraceData, TraceInfo, TraceLocation, TraceState
    from mlflow.entities.span import LazySpan
    from mlflow.protos.service_pb2 import BatchGetTraces
    from mlflow.utils.proto_json_utils import message_to_json

    rng = random.Random(2)
    traces = []
    for n in range(6):
        info = TraceInfo(trace_id=f"tr-{n}", trace_location=TraceLocation.from_experiment_id("1"),
                         request_time=1_700_000_000_000 + n, state=TraceState.OK, execution_duration=n or None,
                         trace_metadata={"m": "é"}, tags={"t": str(n)} if n % 2 else {})
        spans = [LazySpan.from_stored_content(json.dumps(span_dict(rng))) for _ in range(n % 3)]
        traces.append(Trace(info=info, data=TraceData(spans=spans)))
    good = [t for t in traces if all(not isinstance(mlflows(json.dumps(s.to_dict())), Exception) for s in t.data.spans)]
    expected = message_to_json(BatchGetTraces.Response(traces=[t.to_proto() for t in good]), pretty=False)
    fresh = [Trace(info=t.info, data=TraceData(spans=[LazySpan.from_stored_content(json.dumps(s.to_dict()))
                                                      for s in t.data.spans])) for t in good]
    assert trace_answers.traces_json(fresh, jsonout.message_to_dict) == expected
    assert trace_answers.traces_json([], jsonout.message_to_dict) == message_to_json(BatchGetTraces.Response(), pretty=False)


def test_install_routes_mlflows_batch_get_view_here():
    import subprocess
    import sys

    # A fresh interpreter: installing changes MLflow's handlers module for the whole process.
    code = (
        "from mlflow.server import app as flask_app, handlers\n"
        "from mlflow_gcp.server import app, trace_answers\n"
        "assert not trace_answers.install()  # not before the compact message_to_json\n"
        "assert app.compact_json() and trace_answers.install()\n"
        "for original in (handlers._batch_get_traces, handlers._search_traces_v3):\n"
        "    views = [f for f in flask_app.view_functions.values() if getattr(f, '__wrapped__', None) is original]\n"
        "    assert len(views) >= 1, (original, views)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def _maps_sorted(text: str):
    """The answer's tree with each map's entries in key order: protobuf's own map order differs
    between processes, so only the entries are compared, not their order."""
    def hook(pairs):
        return {key: (dict(sorted(value.items())) if key in ("tags", "trace_metadata") else value) for key, value in pairs}

    return json.loads(text, object_pairs_hook=hook)


@pytest.mark.parametrize("numbers", [True, False])
def test_random_trace_infos_print_as_mlflows(numbers):
    from mlflow.entities import TraceInfo, TraceLocation, TraceState
    from mlflow.utils.proto_json_utils import message_to_json

    rng = random.Random(5)
    fast = 0
    times = [0, 1, 999, 1000, 1_700_000_000_123, 1_700_000_000_000, 253_402_300_799_999, -1, -1001, 10**14, 315_576_000_000_999]
    texts = STRINGS + ["x" * 300, "ü" * 300]
    for n in range(1500):
        info = TraceInfo(
            trace_id=rng.choice(["tr-" + "a" * 32, "tr-é", "\ud800"]),
            trace_location=TraceLocation.from_experiment_id(rng.choice(["0", "12", "é"])),
            request_time=rng.choice(times), execution_duration=rng.choice([None, *times]),
            state=rng.choice(list(TraceState)),
            request_preview=rng.choice([None, *texts]), response_preview=rng.choice([None, *texts]),
            client_request_id=rng.choice([None, "", "c-1"]),
            trace_metadata={rng.choice(texts): rng.choice(texts + [3]) for _ in range(rng.randrange(4))},
            tags={rng.choice(texts): rng.choice(texts) for _ in range(rng.randrange(4))})
        try:
            expected = message_to_json(info.to_proto(), pretty=False, convert_int64_to_number=numbers)
        except Exception:
            assert trace_answers.info_json(info) is None, (n, info)
            continue
        printed = trace_answers.info_json(info)
        if printed is None:
            continue
        fast += 1
        assert _maps_sorted(printed) == _maps_sorted(expected), (n, info)
        assert printed == json.dumps(json.loads(printed), separators=(",", ":"))  # literals as json.dumps writes them
    assert fast > 400


def test_search_answer_text_is_mlflows():
    from mlflow.entities import Assessment, AssessmentSource, Feedback, TraceInfo, TraceLocation, TraceState
    from mlflow.protos.service_pb2 import SearchTracesV3
    from mlflow.utils.proto_json_utils import message_to_json

    def answer(infos, token):
        message = SearchTracesV3.Response(traces=[i.to_proto() for i in infos])
        if token:
            message.next_page_token = token
        return message_to_json(message, pretty=False, convert_int64_to_number=False)

    infos = [TraceInfo(trace_id=f"tr-{n}", trace_location=TraceLocation.from_experiment_id("3"), request_time=1_700_000_000_000 + n,
                       state=TraceState.OK, execution_duration=n * 1001 or None, trace_metadata={"m": str(n)},
                       tags={"t": "é", "u": str(n)} if n % 2 else {}, request_preview='{"q": 1}' if n else None)
             for n in range(5)]
    # MLflow's store gives its page tokens as bytes (base64), which protobuf takes as UTF-8 text.
    for chosen, token in ((infos, b"eyJvZmZzZXQiOiA1fQ=="), (infos, "eyJvZmZzZXQiOiA1fQ=="), (infos[:1], None),
                          ([], None), ([], b"t")):
        printed = trace_answers.search_json(chosen, token)
        assert _maps_sorted(printed) == _maps_sorted(answer(chosen, token))
        assert printed == json.dumps(json.loads(printed), separators=(",", ":"))
    # A trace with assessments goes to MLflow's proto and printer.
    feedback = Feedback(name="q", value=True, source=AssessmentSource(source_type="HUMAN", source_id="u"), trace_id="tr-1")
    assessed = TraceInfo(trace_id="tr-1", trace_location=TraceLocation.from_experiment_id("3"), request_time=1,
                         state=TraceState.OK, assessments=[feedback])
    assert isinstance(feedback, Assessment) and trace_answers.search_json([infos[0], assessed], None) is None
