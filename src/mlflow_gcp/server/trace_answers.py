"""BatchGetTraces and SearchTracesV3 answered as JSON text written straight from the stored spans
and the TraceInfos: the same bytes MLflow's handlers answer (map entries aside, see below),
without building an OpenTelemetry span per stored span, a protobuf message per trace, or the
dicts json.dumps would then walk.

Why: MLflow's client's `search_traces(max_results=100)` is one search and ten batch-gets of 10
traces; in each batch-get MLflow's store reads every span's stored JSON into a LazySpan, and the
handler's `Trace.to_proto` turns each into an OpenTelemetry SDK span (`Span.from_dict`: contexts,
status, attribute registry) and then into an OTLP protobuf message, which is then printed as JSON
again. That round trip was ~20% of the server's CPU per batch-get. Here each span's stored dict
is written as what that round trip prints, field by field (MLflow 3.17.2's `Span.from_dict`,
`Span.to_otel_proto`, `_set_otel_proto_anyvalue`, OTel's `Status`, then protobuf's printer with
MLflow's int64 pass: fields in field-number order, proto3 defaults left out, oneof members kept,
int64 as numbers, bytes as base64), as text: building the printer's dicts and then json.dumps
of the ~85 KB answer were each ~10% of a batch-get. Each TraceInfo (batch-get and search) is
written the same way as `TraceInfo.to_proto` then the printer give it: Timestamp and Duration
as protobuf writes them, tags and metadata truncated by MLflow's own functions. Map entries
come in the dict's order; protobuf's own iteration order differs between processes (stock's
answers differ from one another there too).

Only the usual shape is written here: a stored span of MLflow 3's schema (base64 ids, OTLP
status names, attributes a dict, no links, event attributes of plain strings), a TraceInfo of an
experiment's trace without assessments. Any other span - older schemas, links, odd types, values
protobuf would refuse (out-of-range ints, strings that are not UTF-8) - goes through MLflow's own
`to_otel_proto` and server/jsonout.py's walk, any other TraceInfo through its `to_proto` and
the walk, and an answer the walk cannot print goes down MLflow's own path, so errors stay
MLflow's. The search view is MLflow's handler copied, used only while MLflow's source is the one
copied (sha256). tests/unit/test_trace_answers.py compares both with MLflow's on random spans
and infos; the differential test compares raw answers with stock MLflow's.
"""

from __future__ import annotations

import base64
import datetime
import functools
import inspect
import json
from json.encoder import encode_basestring_ascii

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from mlflow.entities import TraceState
from mlflow.entities.trace_info_v2 import _truncate_request_metadata, _truncate_tags
from mlflow.entities.trace_location import MlflowExperimentLocation, TraceLocationType

from mlflow_gcp.server import copied, view_swap
from mlflow_gcp.server.jsonout import protobuf_double
from mlflow_gcp.server.search import Answer

_STATUS = {"STATUS_CODE_UNSET": None, "STATUS_CODE_OK": "STATUS_CODE_OK", "STATUS_CODE_ERROR": "STATUS_CODE_ERROR"}
_INT64 = (-(2**63), 2**63 - 1)
_REQUEST_ID = "mlflow.traceRequestId"  # SpanAttributeKey.REQUEST_ID, checked at install
_SCAN = json.JSONDecoder().scan_once  # what json.loads runs, as json.loads configures it
_NO_PARENT = base64.b64encode(bytes(8)).decode("ascii")
_quoted = encode_basestring_ascii  # a str as json.dumps writes it (ensure_ascii)


class _Other(Exception):
    """This span goes through MLflow's own conversion."""


def _utf8(text: str) -> str:
    """A string protobuf accepts as it is (lone surrogates make it raise)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Other("not UTF-8") from None
    return text


def _id(raw: bytes, size: int) -> str:
    """bytes.fromhex(format_trace_id / format_span_id(int of `raw`)) printed as base64: `size`
    bytes, big-endian (an id stored at that size is those very bytes)."""
    if len(raw) != size:
        value = int.from_bytes(raw, "big")
        if value.bit_length() > size * 8:
            raise _Other("id width")
        raw = value.to_bytes(size, "big")
    return base64.b64encode(raw).decode("ascii")


def _decoded_id(text) -> bytes:
    if type(text) is not str:
        raise _Other("id")
    try:
        return base64.b64decode(text, validate=True)
    except Exception:
        raise _Other("id not base64") from None  # MLflow 3.5's hex form and others


def _text(value: str) -> str:
    """A string as protobuf's AnyValue keeps it (lone surrogates replaced), then as json.dumps
    writes it."""
    if not value.isascii():
        value = value.encode("utf-8", errors="replace").decode("utf-8")
    return _quoted(value)


def _double(value: float) -> str:
    special = protobuf_double(value)
    return _quoted(special) if type(special) is str else float.__repr__(value)


def _any_value(value) -> str:
    """`_set_otel_proto_anyvalue(AnyValue(), value)` as printed; None leaves it unset ({})."""
    kind = type(value)
    if kind is str:
        return '{"string_value":' + _text(value) + "}"
    if value is None:
        return "{}"
    if kind is bool:
        return '{"bool_value":true}' if value else '{"bool_value":false}'
    if kind is int:
        if not _INT64[0] <= value <= _INT64[1]:
            raise _Other("int64 range")
        return '{"int_value":' + int.__repr__(value) + "}"
    if kind is float:
        return '{"double_value":' + _double(value) + "}"
    if kind is list:
        if not value:
            return '{"array_value":{}}'
        return '{"array_value":{"values":[' + ",".join([_any_value(item) for item in value]) + "]}}"
    if kind is dict:
        if not value:
            return '{"kvlist_value":{}}'
        pairs = [_key_value(_text(str(key)), item) for key, item in value.items()]
        return '{"kvlist_value":{"values":[' + ",".join(pairs) + "]}}"
    raise _Other(kind.__name__)


def _key_value(key: str, value) -> str:
    """A KeyValue as printed, `key` already written as a JSON string ('""' when empty)."""
    if value is None:
        return "{}" if key == '""' else '{"key":' + key + "}"
    if key == '""':
        return '{"value":' + _any_value(value) + "}"
    return '{"key":' + key + ',"value":' + _any_value(value) + "}"


def _attribute(serialized):
    """MLflow's attribute registry's `get`: JSON-decoded, the raw value where that fails, None
    for a falsy one."""
    if not serialized:
        return None
    if type(serialized) is str:
        # json.loads' own C scanner without its Python wrapper (~6 calls per span): taken only
        # for a document from the first character to the last; anything else (whitespace
        # around it, extra data, no JSON at all) goes to json.loads, which decides.
        try:
            value, end = _SCAN(serialized, 0)
        except (StopIteration, ValueError, RecursionError):
            pass
        else:
            if end == len(serialized):
                return value
    try:
        return json.loads(serialized)
    except Exception:
        return serialized


def _event(event) -> str:
    if type(event) is not dict:
        raise _Other("event")
    name = event["name"]
    time_ns = int(event["time_unix_nano"])
    attributes = event.get("attributes", {})
    if type(name) is not str or type(attributes) is not dict or not 0 <= time_ns < 2**64:
        raise _Other("event")
    out = []
    if time_ns:
        out.append('"time_unix_nano":' + int.__repr__(time_ns))
    if name:
        out.append('"name":' + _quoted(_utf8(name)))
    if attributes:
        pairs = []
        for key, value in attributes.items():
            # Event attributes are passed on raw (not JSON-decoded); only plain strings here.
            if type(key) is not str or type(value) is not str:
                raise _Other("event attribute")
            pairs.append(_key_value(_quoted(_utf8(key)), value))
        out.append('"attributes":[' + ",".join(pairs) + "]")
    return "{" + ",".join(out) + "}"


def span_json(span) -> str | None:
    """The JSON text protobuf's printer with MLflow's int64 pass gives for `span.to_otel_proto()`
    (as json.dumps writes it compact), for a LazySpan not yet materialised holding the usual
    stored shape; None for any other span."""
    from mlflow.entities.span import LazySpan

    if type(span) is not LazySpan or span.__dict__.get("_materialized") is not False:
        return None
    data = span.__dict__.get("_span_dict")
    try:
        return _span_json(data)
    except _Other:
        return None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # MLflow's own path says what is wrong with it


def _span_json(data) -> str:
    if type(data) is not dict or "context" in data or data.get("links"):
        raise _Other("schema")
    attributes = data.get("attributes", {})
    if type(attributes) is not dict or not attributes.get(_REQUEST_ID):
        raise _Other("attributes")
    trace_id = _decoded_id(data["trace_id"])
    span_id = _decoded_id(data["span_id"])
    parent_id = _decoded_id(data["parent_span_id"]) if data["parent_span_id"] else None
    status = data["status"]
    if status["code"] not in _STATUS:
        raise _Other("status")  # MLflow 3.5's "OK" / "ERROR" and others
    code = _STATUS[status["code"]]
    message = status.get("message", "")
    name = data["name"]
    start = int(data["start_time_unix_nano"])
    end = data.get("end_time_unix_nano")
    end = int(end) if end else None
    if type(name) is not str or not 0 <= start < 2**64 or (end is not None and not 0 <= end < 2**64):
        raise _Other("name or times")
    events = data.get("events", [])
    if type(events) is not list:
        raise _Other("events")

    # Written as json.dumps(separators=(",", ":")) writes the printer's dict: fields in its order.
    out = ['{"trace_id":"', _id(trace_id, 16), '","span_id":"', _id(span_id, 8), '"']
    parent = _id(parent_id, 8) if parent_id is not None else None
    if parent is not None and parent != _NO_PARENT:  # an all-zero id is proto3's default
        out += ',"parent_span_id":"', parent, '"'
    if name:
        out += ',"name":', _quoted(_utf8(name))
    if start:
        out += ',"start_time_unix_nano":', int.__repr__(start)
    if end:
        out += ',"end_time_unix_nano":', int.__repr__(end)
    pairs = []
    for key, value in attributes.items():
        if type(key) is not str:
            raise _Other("attribute key")
        pairs.append(_key_value(_quoted(_utf8(key)), _attribute(value)))
    if pairs:
        out += ',"attributes":[', ",".join(pairs), "]"
    if events:
        out += ',"events":[', ",".join([_event(event) for event in events]), "]"
    # OTel's Status keeps a description only for ERROR (and only a str); UNSET is proto3's default.
    printed_status = []
    if code == "STATUS_CODE_ERROR" and message:
        if type(message) is not str:
            raise _Other("status message")
        printed_status.append('"message":' + _quoted(_utf8(message)))
    if code is not None:
        printed_status.append('"code":"' + code + '"')
    out += ',"status":{', ",".join(printed_status), "}}"
    return "".join(out)


# Inside these ranges protobuf's Timestamp / Duration.FromMilliseconds and ToJsonString give what
# `_timestamp` / `_duration` write; outside them (negative, out of range) protobuf writes or refuses.
_LAST_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_LAST_DURATION_MS = 315_576_000_000_999
_EPOCH = datetime.datetime(1970, 1, 1)


def _timestamp(ms: int) -> str:
    if not 0 <= ms <= _LAST_TIMESTAMP_MS:
        stamp = Timestamp()
        stamp.FromMilliseconds(ms)
        return stamp.ToJsonString()
    text = (_EPOCH + datetime.timedelta(seconds=ms // 1000)).isoformat()
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else text + "Z"


def _duration(ms: int) -> str:
    if not 0 <= ms <= _LAST_DURATION_MS:
        duration = Duration()
        duration.FromMilliseconds(ms)
        return duration.ToJsonString()
    return f"{ms // 1000}.{ms % 1000:03d}s" if ms % 1000 else f"{ms // 1000}s"


def _string_map(pairs: dict) -> str:
    """A map<string, string> field's entries (truncated by MLflow's own function first), or _Other."""
    out = []
    for key, value in pairs.items():
        if type(key) is not str or type(value) is not str:
            raise _Other("map entry")
        out.append(_quoted(_utf8(key)) + ":" + _quoted(_utf8(value)))
    return "{" + ",".join(out) + "}"


def info_json(info) -> str | None:
    """The JSON text `message_to_json(info.to_proto())` gives (compact; int64 either way: a
    TraceInfoV3 without assessments has none), for a TraceInfo of an experiment's trace without
    assessments; None for any other (MLflow's proto and printer then write it). Map entries
    (tags, metadata) come in the dict's order: protobuf's own order differs between processes."""
    location = info.trace_location
    experiment = location.mlflow_experiment
    if (info.assessments or type(info.state) is not TraceState or type(experiment) is not MlflowExperimentLocation
            or location.type is not TraceLocationType.MLFLOW_EXPERIMENT or location.inference_table is not None
            or location.uc_schema is not None or location.uc_table_prefix is not None):
        return None
    try:
        out = []
        # Fields in field-number order, as protobuf lists the ones that are set.
        for name, value in (("trace_id", info.trace_id), ("client_request_id", info.client_request_id)):
            if value is not None:
                if type(value) is not str:
                    raise _Other(name)
                out.append(f'"{name}":' + _quoted(_utf8(value)))
        if type(experiment.experiment_id) is not str:
            raise _Other("experiment id")
        out.append('"trace_location":{"type":"MLFLOW_EXPERIMENT","mlflow_experiment":{"experiment_id":'
                   + _quoted(_utf8(experiment.experiment_id)) + "}}")
        if type(info.request_time) is not int:
            raise _Other("request time")
        out.append('"request_time":"' + _timestamp(info.request_time) + '"')
        if info.execution_duration is not None:
            if type(info.execution_duration) is not int:
                raise _Other("execution duration")
            out.append('"execution_duration":"' + _duration(info.execution_duration) + '"')
        out.append('"state":"' + info.state.value + '"')
        metadata = _truncate_request_metadata(info.trace_metadata)
        if metadata:
            out.append('"trace_metadata":' + _string_map(metadata))
        tags = _truncate_tags(info.tags)
        if tags:
            out.append('"tags":' + _string_map(tags))
        for name, value in (("request_preview", info.request_preview), ("response_preview", info.response_preview)):
            if value is not None:
                if type(value) is not str:
                    raise _Other(name)
                out.append(f'"{name}":' + _quoted(_utf8(value)))
    except (_Other, ValueError):
        return None  # MLflow's proto says what is wrong with it
    return "{" + ",".join(out) + "}"


def _compact(as_dict: dict) -> str:
    return json.dumps(as_dict, separators=(",", ":"))


def traces_json(traces, walk) -> str | None:
    """The BatchGetTraces answer text for these traces, or None for MLflow's own path. `walk` is
    server/jsonout.py's message_to_dict."""
    if not traces:
        return "{}"
    printed = []
    for trace in traces:
        info = info_json(trace.info)
        if info is None:
            as_dict = walk(trace.info.to_proto())
            if as_dict is None:
                return None
            info = _compact(as_dict)
        spans = []
        for span in trace.data.spans:
            text = span_json(span)
            if text is None:
                as_dict = walk(span.to_otel_proto())
                if as_dict is None:
                    return None
                text = _compact(as_dict)
            spans.append(text)
        info_text = '{"trace_info":' + info
        printed.append(info_text + ',"spans":[' + ",".join(spans) + "]}" if spans else info_text + "}")
    return '{"traces":[' + ",".join(printed) + "]}"


def _view(handlers, message_class, schema: dict, answer):
    """A view as MLflow's trace handlers are built: its two decorators, then the request parsed
    and checked by MLflow's `_get_request_message`, then `answer(request_message)`."""

    @handlers.catch_mlflow_exception
    @handlers._disable_if_artifacts_only
    def view():
        return answer(handlers._get_request_message(message_class(), schema=schema))

    return view


def _batch_get_traces(handlers, walk):
    """MLflow 3.17.2's `_batch_get_traces` handler, its answer written by `traces_json`."""
    from mlflow.protos.service_pb2 import BatchGetTraces

    def answer(request_message):
        store = handlers._get_tracking_store()
        experiment_ids_field = request_message.DESCRIPTOR.fields_by_name["experiment_ids"]
        if handlers._raw_request_has_field(experiment_ids_field):
            traces = store.batch_get_traces(request_message.trace_ids, None,
                                            experiment_ids=list(request_message.experiment_ids))
        else:
            traces = store.batch_get_traces(request_message.trace_ids, None)
        text = traces_json(traces, walk)
        if text is None:
            response_message = BatchGetTraces.Response()
            response_message.traces.extend([t.to_proto() for t in traces])
            return handlers._wrap_response(response_message, pretty=False)
        return handlers._wrap_response(Answer(text), pretty=False)

    return _view(handlers, BatchGetTraces, {
        "trace_ids": [handlers._assert_array, handlers._assert_required, handlers._assert_item_type_string],
        "experiment_ids": [handlers._assert_array, handlers._assert_item_type_string],
    }, answer)


# sha256 of MLflow 3.17.2's `_search_traces_v3` handler source (decorators included), the one
# `_search_traces_v3` below follows.
SEARCH_SOURCE = "7e3c0710e7ebfabd96cfce7db52d4e33301399aa30d2efb59fb20064253d866a"


def search_json(traces, token) -> str | None:
    """The SearchTracesV3 answer text for these TraceInfos and page token, or None for MLflow's
    own path."""
    infos = []
    for info in traces:
        text = info_json(info)  # None: MLflow's proto and printer, errors included
        if text is None:
            return None
        infos.append(text)
    fields = ['"traces":[' + ",".join(infos) + "]"] if infos else []
    if token:
        if type(token) is bytes:  # MLflow's page tokens are base64 bytes; protobuf takes UTF-8 ones
            try:
                token = token.decode("utf-8")
            except UnicodeDecodeError:
                return None
        elif type(token) is not str:
            return None
        fields.append('"next_page_token":' + _quoted(_utf8(token)))
    return "{" + ",".join(fields) + "}"


def _search_traces_v3(handlers):
    """MLflow 3.17.2's `_search_traces_v3` handler, its answer written by `search_json`."""
    from mlflow.protos.service_pb2 import SearchTracesV3

    def answer(request_message):
        # MLflow's code, line for line, after its request parse and up to its answer.
        experiment_ids = [
            location.mlflow_experiment.experiment_id
            for location in request_message.locations
            if location.HasField("mlflow_experiment")
        ]

        traces, token = handlers._get_tracking_store().search_traces(
            locations=experiment_ids,
            filter_string=request_message.filter,
            max_results=request_message.max_results,
            order_by=request_message.order_by,
            page_token=request_message.page_token or None,
        )
        text = search_json(traces, token)
        if text is not None:
            return handlers._wrap_trace_info_response(Answer(text))
        response_message = SearchTracesV3.Response()
        response_message.traces.extend([e.to_proto() for e in traces])
        if token:
            response_message.next_page_token = token
        return handlers._wrap_trace_info_response(response_message)

    return _view(handlers, SearchTracesV3, {
        "locations": [handlers._assert_array, handlers._assert_required],
        "filter": [handlers._assert_string],
        "max_results": [handlers._assert_intlike, lambda x: handlers._assert_less_than_or_equal(int(x), 500)],
        "order_by": [handlers._assert_array, handlers._assert_item_type_string],
        "page_token": [handlers._assert_string],
    }, answer)


def _compact_json_on(handlers) -> bool:
    """handlers.message_to_json is server/jsonout.py's (it passes an Answer through)."""
    return getattr(handlers.message_to_json, "func", None) is not None


@view_swap.announced("search_traces' trace infos written as JSON text (server/trace_answers.py)",
                     "search traces path off")
def _install_search() -> bool:
    from mlflow.server import handlers

    original = getattr(handlers, "_search_traces_v3", None)
    if copied.digest(inspect.unwrap(original)) != SEARCH_SOURCE or not _compact_json_on(handlers):
        return False
    return view_swap.serve_with(original, functools.wraps(original)(_search_traces_v3(handlers)))


def install() -> bool:
    """Route MLflow's REST batch-get and SearchTracesV3 views through this module (each only where
    MLflow's pieces are the expected ones); False when neither was. Call only once
    handlers.message_to_json is server/jsonout.py's (it passes an Answer through)."""
    batch_get = _install_batch_get()
    search = _install_search()
    return batch_get or search


@view_swap.announced("batch-get traces' spans written from their stored JSON (server/trace_answers.py)",
                     "batch-get traces path off")
def _install_batch_get() -> bool:
    """MLflow's REST batch-get view through `_batch_get_traces`; False (nothing changed) where
    MLflow's pieces are not the expected ones."""
    from mlflow.server import handlers
    from mlflow.tracing.constant import SpanAttributeKey

    from mlflow_gcp.server.jsonout import message_to_dict

    original = getattr(handlers, "_batch_get_traces", None)
    wanted = {"batch_get_traces", "to_proto", "_wrap_response", "_raw_request_has_field"}
    code = getattr(inspect.unwrap(original), "__code__", None) if original is not None else None
    names = set(code.co_names) if code is not None else set()
    for const in (code.co_consts if code is not None else ()):
        names |= set(getattr(const, "co_names", ()))  # the list comprehension's names
    if (original is None or SpanAttributeKey.REQUEST_ID != _REQUEST_ID or not wanted <= names
            or not _compact_json_on(handlers)):
        return False
    return view_swap.serve_with(original, functools.wraps(original)(_batch_get_traces(handlers, message_to_dict)))
