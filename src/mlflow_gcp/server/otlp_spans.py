"""MLflow's `Span.from_otel_proto` for the server's OTLP ingest, with less work per span.

Why: under the replayed trace ingest, py-spy put ~5% of our workers' CPU in MLflow's conversion of
the posted spans, over half of it in the attribute loop: each value goes through WhichOneof,
`_decode_otel_proto_anyvalue` and `dump_span_attribute_value`, which builds a JSON encoder
(MLflow's TraceJSONEncoder) per value. For a str, a bool or an int `json.dumps` never reaches the
encoder's `default`: its text is the C string encoder's (ensure_ascii off), 'true'/'false' or
int's repr, written here directly. Every other kind (MLflow's client posts inputs and outputs as
kvlist or array values) is decoded by MLflow's function and encoded by one TraceJSONEncoder with
json.dumps' settings, built once (it keeps no state between calls); on an error MLflow's
`dump_span_attribute_value` runs, for its fallback. The resource, the same for every span of a
ResourceSpans, is converted once per ResourceSpans (an immutable Resource its spans share)
instead of once per span.

Everything else is MLflow's method body (ids, request id, status, events, links, the Span built
by `Span(ReadableSpan)`), used only while the sources it copies have the sha256s below; otherwise
`converter()` calls MLflow's own method for each span. tests/unit/test_otlp_spans.py compares the
Spans with MLflow's for the client's spans and every attribute kind.
"""

from __future__ import annotations

import functools
from json.encoder import encode_basestring

from mlflow.tracing.utils import TraceJSONEncoder, dump_span_attribute_value
from mlflow.tracing.utils.otlp import _decode_otel_proto_anyvalue

from mlflow_gcp.server import copied

# sha256 of MLflow 3.17.2's sources this follows: Span.from_otel_proto, dump_span_attribute_value,
# TraceJSONEncoder (whose `default` a str, bool or int never reaches) and _decode_otel_proto_anyvalue.
COPIED_SOURCES = {
    "from_otel_proto": "be81d9e0ba45bb98803fbfb2e3d27e8ceb3da51e4d8b38b79dd058c03b3c6171",
    "dump_span_attribute_value": "b39518f2b7095b019c8a68731a7034955606b093e79c9c4dffb8d1db729afb32",
    "TraceJSONEncoder": "765e69adb6ad36778d92bfc71d75e58579e8c87952fd4f90f902b8106df89f66",
    "_decode_otel_proto_anyvalue": "c487716e4c4bdbd286afbd05bf5f8f46798d1372f41623fef4fa8e1d323a9dc1",
}


def _sources() -> dict:
    from mlflow.entities.span import Span
    from mlflow.tracing import utils
    from mlflow.tracing.utils import otlp

    objs = {"from_otel_proto": Span.from_otel_proto, "dump_span_attribute_value": utils.dump_span_attribute_value,
            "TraceJSONEncoder": utils.TraceJSONEncoder,
            "_decode_otel_proto_anyvalue": otlp._decode_otel_proto_anyvalue}
    return {k: copied.digest(v) for k, v in objs.items()}


def _same_sources() -> bool:
    try:
        return _sources() == COPIED_SOURCES
    except Exception:  # an MLflow that changed shape: its own method runs
        return False


def _mlflows(resource_span):
    from mlflow.entities.span import Span

    resource = resource_span.resource
    return [Span.from_otel_proto(s, resource=resource) for scope in resource_span.scope_spans for s in scope.spans]


# What json.dumps(value, cls=TraceJSONEncoder, ensure_ascii=False) builds per call (the encoder
# keeps no state between calls), built once.
_ENCODER = TraceJSONEncoder(ensure_ascii=False)


def _attribute_text(value) -> str:
    """dump_span_attribute_value(_decode_otel_proto_anyvalue(value))."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return encode_basestring(value.string_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return int.__repr__(value.int_value)
    decoded = _decode_otel_proto_anyvalue(value)
    try:
        return _ENCODER.encode(decoded)
    except (ValueError, TypeError):  # MLflow's fallback (a repr) and its log line
        return dump_span_attribute_value(decoded)


@functools.cache
def converter():
    """The per-ResourceSpans conversion (a list of MLflow Spans), built once: the copy when the
    sources match, else MLflow's method per span."""
    if not _same_sources():
        return _mlflows
    from opentelemetry.proto.trace.v1.trace_pb2 import Status as OTelProtoStatus
    from opentelemetry.sdk.resources import Resource as _OTelResource
    from opentelemetry.sdk.trace import Event as OTelEvent
    from opentelemetry.sdk.trace import ReadableSpan as OTelReadableSpan
    from opentelemetry.trace import Status as OTelStatus
    from opentelemetry.trace import StatusCode as OTelStatusCode

    from mlflow.entities.link import Link
    from mlflow.entities.span import Span, _normalize_link_trace_id
    from mlflow.tracing.constant import SpanAttributeKey
    from mlflow.tracing.utils import build_otel_context, generate_mlflow_trace_id_from_otel_trace_id
    from mlflow.tracing.utils.otlp import _decode_otel_proto_anyvalue

    request_id_key = SpanAttributeKey.REQUEST_ID
    ok, error = OTelProtoStatus.STATUS_CODE_OK, OTelProtoStatus.STATUS_CODE_ERROR

    def convert(resource_span):
        resource = resource_span.resource
        if resource.attributes:
            otel_resource = _OTelResource({attr.key: _decode_otel_proto_anyvalue(attr.value)
                                           for attr in resource.attributes})
        else:
            otel_resource = _OTelResource.get_empty()
        spans = []
        for scope_span in resource_span.scope_spans:
            for otel_proto_span in scope_span.spans:
                if not otel_proto_span.trace_id:
                    raise ValueError("trace_id is required but was empty")
                if not otel_proto_span.span_id:
                    raise ValueError("span_id is required but was empty")
                trace_id = int.from_bytes(otel_proto_span.trace_id, byteorder="big", signed=False)
                span_id = int.from_bytes(otel_proto_span.span_id, byteorder="big", signed=False)
                parent_id = None
                if otel_proto_span.parent_span_id:
                    parent_id = int.from_bytes(otel_proto_span.parent_span_id, byteorder="big", signed=False)
                status = otel_proto_span.status
                code = status.code
                status_code = OTelStatusCode.OK if code == ok else OTelStatusCode.ERROR if code == error \
                    else OTelStatusCode.UNSET
                attributes = {attr.key: _attribute_text(attr.value) for attr in otel_proto_span.attributes}
                # "tr-" and hex digits: json.loads of its JSON text is itself. Assigned as MLflow's
                # `{**serialized, KEY: ...}` does: a client's value keeps its place, replaced.
                request_id = generate_mlflow_trace_id_from_otel_trace_id(trace_id)
                attributes[request_id_key] = encode_basestring(request_id)
                links = [Link.from_otel_proto(proto_link) for proto_link in otel_proto_span.links]
                for link in links:
                    link.trace_id = _normalize_link_trace_id(link.trace_id, request_id)
                otel_span = OTelReadableSpan(
                    name=otel_proto_span.name,
                    context=build_otel_context(trace_id, span_id),
                    parent=build_otel_context(trace_id, parent_id) if parent_id else None,
                    start_time=otel_proto_span.start_time_unix_nano,
                    end_time=otel_proto_span.end_time_unix_nano,
                    attributes=attributes,
                    status=OTelStatus(status_code, status.message or None),
                    events=[
                        OTelEvent(
                            name=event.name,
                            timestamp=event.time_unix_nano,
                            attributes={attr.key: _decode_otel_proto_anyvalue(attr.value)
                                        for attr in event.attributes},
                        )
                        for event in otel_proto_span.events
                    ],
                    resource=otel_resource,
                )
                span = Span(otel_span)
                span._links = links
                spans.append(span)
        return spans

    return convert
