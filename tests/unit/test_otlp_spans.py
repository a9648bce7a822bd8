"""server/otlp_spans.py builds the same MLflow Spans as MLflow's `Span.from_otel_proto`: for the spans
MLflow's client posts (made by MLflow's tracing and its own `to_otel_proto`) and for every
attribute kind, events, links, status codes and messages, parents, resources, non-ASCII text."""

from __future__ import annotations

import math

import pytest

from mlflow_gcp.server import otlp_spans

from tests.support.otlp_values import add_attributes


def facts(span):
    """What a Span holds, field by field (attribute texts in order)."""
    o = span._span
    return {
        "dict": span.to_dict(),
        "attributes": list(o.attributes.items()),
        "cached": dict(span._attributes._cache) if hasattr(span._attributes, "_cache") else None,
        "name": o.name, "context": o.context, "parent": o.parent,
        "times": (o.start_time, o.end_time),
        "status": (o.status.status_code, o.status.description),
        "events": [(e.name, e.timestamp, list(e.attributes.items())) for e in o.events],
        "resource": (list(o.resource.attributes.items()), o.resource.schema_url),
        "links": [vars(link) for link in span._links],
        "ids": (span.trace_id, span.span_id, span.parent_id, span.request_id),
        "kind": (type(span), type(o), o.kind, o.instrumentation_scope),
    }


def mlflows(resource_span):
    from mlflow.entities.span import Span

    return [Span.from_otel_proto(s, resource=resource_span.resource)
            for scope in resource_span.scope_spans for s in scope.spans]


def assert_same(resource_span):
    ours = otlp_spans.converter()(resource_span)
    theirs = mlflows(resource_span)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        fa, fb = facts(a), facts(b)
        assert fa.keys() == fb.keys()
        for key in fa:
            assert repr(fa[key]) == repr(fb[key]), key  # repr: NaN texts compare, dict order counts


EVERY_KIND = [
    ("s", "plain"), ("empty string", ""), ("json text", '{"a": [1, "é日本"], "b": null}'),
    ("quotes", 'say "hi"\\ \n\t\x00\x1f\u2028 end'), ("non-ascii é日本🙂", "é日本🙂"),
    ("true", True), ("false", False), ("zero", 0), ("int", -42), ("int64 max", 2**63 - 1), ("int64 min", -2**63),
    ("double", 1.5), ("double int", 3.0), ("tiny", 1e-300), ("negative zero", -0.0),
    ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf),
    ("bytes", b"\x00\xff bytes"), ("empty bytes", b""),
    ("array", [1, "two", 3.5, True, b"b", [None], {"k": "v"}]), ("empty array", []),
    ("kvlist", {"a": 1, "b": {"c": ["d"]}, "e": None}), ("empty kvlist", {}),
    ("empty value", None),
    ("mlflow.traceRequestId", '"tr-client-sent"'),  # replaced by the server's, in its place
    ("s", "duplicate key: the last wins"),
]


def export_request(spans: list[dict], resource: list | None = None, scopes: int = 1):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    if resource is not None:
        add_attributes(rs.resource.attributes, resource)
    scope_list = [rs.scope_spans.add() for _ in range(scopes)]
    for i, fields in enumerate(spans):
        span = scope_list[i % scopes].spans.add(
            trace_id=fields.get("trace_id", bytes.fromhex("0af7651916cd43dd8448eb211c80319c")),
            span_id=fields.get("span_id", (i + 1).to_bytes(8, "big")), name=fields.get("name", f"span-é{i}"),
            start_time_unix_nano=1_700_000_000_000_000_000 + i, end_time_unix_nano=1_700_000_000_000_001_000 + i)
        if "parent" in fields:
            span.parent_span_id = fields["parent"]
        add_attributes(span.attributes, fields.get("attributes", []))
        code, message = fields.get("status", (0, ""))
        span.status.code, span.status.message = code, message
        for name, when, attrs in fields.get("events", []):
            add_attributes(span.events.add(name=name, time_unix_nano=when).attributes, attrs)
        for trace_id, span_id, attrs in fields.get("links", []):
            add_attributes(span.links.add(trace_id=trace_id, span_id=span_id).attributes, attrs)
    return rs


def test_every_attribute_kind_event_link_status_and_resource_match_mlflows():
    parent = (1).to_bytes(8, "big")
    spans = [
        {"attributes": EVERY_KIND, "status": (1, "")},  # the root: no parent
        {"parent": parent, "attributes": EVERY_KIND[::-1], "status": (2, "boom é")},
        {"parent": parent, "status": (1, "a message MLflow drops on OK")},
        {"parent": parent, "status": (0, "unset with a message")},
        {"parent": parent, "status": (5, "")},  # a code OTLP does not define: unset
        {"parent": parent, "events": [("exception", 123, EVERY_KIND), ("empty", 0, [])], "name": ""},
        {"parent": parent, "links": [(bytes(range(16)), bytes(range(8)), EVERY_KIND),
                                     (bytes(16), bytes(8), [])]},
        {"trace_id": (2**128 - 1).to_bytes(16, "big"), "span_id": (2**64 - 1).to_bytes(8, "big"),
         "attributes": [("mlflow.spanInputs", '{"q": "日本"}')]},
    ]
    for resource in (None, [], [("service.name", "claude-code"), ("telemetry.sdk.language", "python")],
                     EVERY_KIND):
        for scopes in (1, 3):
            assert_same(export_request(spans, resource, scopes))


def test_the_spans_mlflows_client_posts_match_mlflows(tmp_path, monkeypatch):
    """Spans made by MLflow's tracing (nested, typed, inputs and outputs, attributes of several
    kinds, an exception event, token usage), posted as its client does with `to_otel_proto`."""
    import mlflow
    from mlflow.entities import SpanType
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    # The default experiment of the fresh database: an earlier test in this process may have left
    # mlflow.set_experiment's choice behind (its module global and MLFLOW_EXPERIMENT_ID).
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        with mlflow.start_span("agent é", span_type=SpanType.AGENT) as root:
            root.set_inputs({"question": "日本 ?", "n": 3})
            root.set_attributes({"flag": True, "count": 7, "ratio": 0.25, "tags": ["a", "b"]})
            with mlflow.start_span("llm", span_type=SpanType.CHAT_MODEL) as llm:
                llm.set_inputs([{"role": "user", "content": "hi"}])
                llm.set_attribute("mlflow.chat.tokenUsage", {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7})
                llm.set_outputs("hello")
            with pytest.raises(ValueError):
                with mlflow.start_span("tool", span_type=SpanType.TOOL):
                    raise ValueError("bad tool")
            root.set_outputs({"answer": "ok"})
        trace = mlflow.get_trace(root.trace_id)
    finally:
        mlflow.set_tracking_uri(None)
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    add_attributes(rs.resource.attributes, [("service.name", "mlflow"), ("telemetry.sdk.language", "python")])
    rs.scope_spans.add().spans.extend(span.to_otel_proto() for span in trace.data.spans)
    assert len(trace.data.spans) == 3 and any(s.events for s in trace.data.spans)
    assert_same(rs)


def test_missing_ids_fail_as_mlflows():
    for fields in ({"trace_id": b""}, {"span_id": b""}):
        rs = export_request([fields])
        with pytest.raises(ValueError) as theirs:
            mlflows(rs)
        with pytest.raises(ValueError) as ours:
            otlp_spans.converter()(rs)
        assert str(ours.value) == str(theirs.value)


def test_mlflows_method_runs_when_a_copied_source_changed(monkeypatch):
    monkeypatch.setitem(otlp_spans.COPIED_SOURCES, "TraceJSONEncoder", "0" * 64)
    assert otlp_spans.converter.__wrapped__() is otlp_spans._mlflows
    monkeypatch.undo()
    assert otlp_spans.converter.__wrapped__() is not otlp_spans._mlflows
