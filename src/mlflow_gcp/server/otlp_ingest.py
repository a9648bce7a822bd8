"""MLflow's OTLP span export (POST /v1/traces, otel_api.export_traces) answered without FastAPI's
routing, dependency resolution and exception layers, for the request MLflow's client sends.

Why: under the bench's trace ingest (MLflow's client: each 8-span trace is ~2 OTLP posts and one
StartTraceV3), py-spy on our worker in GIL mode put ~5% of the worker's CPU in FastAPI's handling
of the OTLP route around MLflow's handler (route matching over MLflow's routers, header
dependencies solved per request, the Response object and FastAPI's own middleware layers), as much
as MLflow's conversion of the spans.

Here the request MLflow's client sends - a protobuf body, not compressed, one experiment id
header, no run id, no workspace header, no Origin - runs MLflow's own handler body (copied below,
used only while export_traces' source is the one copied, by sha256): the same parse, the same
Spans as `Span.from_otel_proto` builds (server/otlp_spans.py) and service-name rule, the same
`store.log_spans_async` call,
the same telemetry event and the same answers for the store's outcomes (200 with an empty
ExportTraceServiceResponse, MLflow's error JSON, 501, 422). Everything else goes to MLflow's app
with the body replayed: other content types or encodings, a run id (MLflow links the traces to
the run), a workspace header, a body it cannot parse or convert (MLflow answers its own 400/422),
a large body, and any failure before the store was called. With MLflow's Prometheus metrics
installed, or workspaces, artifacts-only mode or permissions on, nothing is intercepted.
The guard, caller identity and audit layers (server/guard.py, server/caller.py) are outside this,
so they see these requests as before. tests/integration/test_otlp_ingest.py compares answers and
rows with MLflow's path.
"""

from __future__ import annotations

import functools
import json
import sys
import types

from mlflow_gcp.server import copied, fastpath, otlp_spans

# sha256 of MLflow 3.17.2's otel_api.export_traces source, the one `_export` follows.
COPIED_SOURCE = "74519731a555e486733b7a5dacc8b205a495320b0ef8867193ae5ab343019e0d"
_PROTOBUF = b"application/x-protobuf"
# Headers whose presence sends the request to MLflow (besides a content-encoding).
_TO_MLFLOW = frozenset((b"origin", b"content-encoding"))
_REFUSED = object()  # _parse: not the plain request; MLflow's path answers it


class OtlpIngest:
    """ASGI: the plain OTLP export answered by MLflow's handler body, else `app`."""

    def __init__(self, app, path: str, names: dict):
        self.app = app
        self.path = path
        self.experiment_header = names["experiment"]
        self.run_header = names["run"]
        self.workspace_header = names["workspace"]
        self.user_agent_header = names["user_agent"]
        self.to_mlflow = _TO_MLFLOW | {self.run_header, self.workspace_header}
        from mlflow.utils.workspace_context import clear_server_request_workspace, set_server_request_workspace

        # As server/plain_middleware.py's _Workspace does for MLflow's app: no workspace.
        self.set_workspace, self.clear_workspace = set_server_request_workspace, clear_server_request_workspace

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = self._plain_headers(scope["headers"])
        if headers is None:
            await self.app(scope, receive, send)
            return
        body, more = await fastpath.read_body(receive)
        if body is None:
            return  # the client went away
        if not more and await self._answer(scope, receive, send, body, *headers):
            return
        await self.app(scope, fastpath.replay(body, more, receive), send)

    def _plain_headers(self, raw) -> tuple[str, str | None] | None:
        """(experiment id, user agent) of a request MLflow's client sends, else None."""
        experiment, agent, types = [], [], []
        for name, value in raw:
            if name == self.experiment_header:
                experiment.append(value)
            elif name == b"content-type":
                types.append(value)
            elif name == self.user_agent_header:
                agent.append(value)
            elif name in self.to_mlflow:
                return None
        if len(experiment) != 1 or len(types) != 1 or len(agent) > 1:
            return None
        if types[0].split(b";")[0].strip() != _PROTOBUF:
            return None
        try:
            return experiment[0].decode("latin-1"), agent[0].decode("latin-1") if agent else None
        except UnicodeDecodeError:
            return None

    async def _answer(self, scope, receive, send, body: bytes, experiment_id: str, user_agent) -> bool:
        """True when answered here; False leaves the request (nothing written) to MLflow."""
        try:
            parsed = _parse(body)
        except Exception:  # MLflow's own parse and conversion answer it
            return False
        if parsed is _REFUSED:
            return False
        self.set_workspace(None)
        try:
            response = await _export(experiment_id, user_agent, *parsed)
        finally:
            self.clear_workspace()
        await response(scope, receive, send)
        return True


def _parse(body: bytes):
    """MLflow's parse and span conversion (export_traces' first half) for a protobuf body:
    (spans, completed trace ids, service names), or _REFUSED where MLflow answers an error."""
    m = _names()
    _KNOWN_SERVICE_NAMES, dump_span_attribute_value = m.KNOWN_SERVICE_NAMES, m.dump_span_attribute_value
    _decode_otel_proto_anyvalue, convert = m.decode_anyvalue, m.convert
    parsed_request = m.ExportTraceServiceRequest()
    parsed_request.ParseFromString(body)
    if not parsed_request.resource_spans:
        return _REFUSED
    all_spans = []
    completed_trace_ids = set()
    service_names = set()
    for resource_span in parsed_request.resource_spans:
        resource_service_name = None
        for attr in resource_span.resource.attributes:
            if attr.key == "service.name":
                value = _decode_otel_proto_anyvalue(attr.value)
                if value is not None and str(value) in _KNOWN_SERVICE_NAMES:
                    resource_service_name = str(value)
                    service_names.add(resource_service_name)
                break
        # MLflow's `Span.from_otel_proto(span, resource=resource_span.resource)` for each span.
        for mlflow_span in convert(resource_span):
            if mlflow_span.parent_id is None:
                completed_trace_ids.add(mlflow_span.trace_id)
                if resource_service_name:
                    mlflow_span._span._attributes["service.name"] = dump_span_attribute_value(
                        resource_service_name)
            all_spans.append(mlflow_span)
    return all_spans, completed_trace_ids, service_names


async def _export(experiment_id: str, user_agent, all_spans, completed_trace_ids, service_names):
    """export_traces' second half (no run id, no metrics): the store call and MLflow's answer."""
    m = _names()
    MlflowException, TraceSource = m.MlflowException, m.TraceSource
    if all_spans:
        store = m.handlers._get_tracking_store()
        try:
            await store.log_spans_async(experiment_id, all_spans)
        except NotImplementedError:
            return _detail(501, f"REST OTLP span logging is not supported by {store.__class__.__name__}")
        except MlflowException as e:
            from fastapi.responses import JSONResponse

            return JSONResponse(status_code=e.get_http_status_code(), content=json.loads(e.serialize_as_json()))
        except Exception:
            return _detail(422, "Failed to log OpenTelemetry spans")
        if completed_trace_ids:
            if user_agent and user_agent.startswith(m.MLFLOW_PYTHON_CLIENT_USER_AGENT_PREFIX):
                trace_source = TraceSource.MLFLOW_PYTHON_CLIENT
            elif service_names:
                trace_source = TraceSource.EXTERNAL_OTEL_CLIENT
            else:
                trace_source = TraceSource.UNKNOWN
            event_params: dict[str, object] = {"source": trace_source, "count": len(completed_trace_ids)}
            if service_names:
                event_params["service_names"] = sorted(service_names)
            m.record_event(m.TracesReceivedByServerEvent, event_params)
    return m.answer_ok


@functools.cache
def _names():
    """What _parse and _export use of MLflow, imported once (not per request)."""
    from fastapi.responses import Response
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    from mlflow.exceptions import MlflowException
    from mlflow.server import handlers
    from mlflow.server.otel_api import _KNOWN_SERVICE_NAMES
    from mlflow.telemetry.events import TraceSource, TracesReceivedByServerEvent
    from mlflow.telemetry.track import _record_event
    from mlflow.tracing.utils import dump_span_attribute_value
    from mlflow.tracing.utils.otlp import _decode_otel_proto_anyvalue
    from mlflow.tracking.request_header.default_request_header_provider import (
        _MLFLOW_PYTHON_CLIENT_USER_AGENT_PREFIX,
    )

    # MLflow's 200 answer: the same status, headers and body every time, built once.
    ok = Response(content=ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf",
                  status_code=200)
    status, headers, body = ok.status_code, ok.raw_headers, ok.body

    async def answer_ok(scope, receive, send):
        # New messages and header list each time: the layers outside add headers to them in place.
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        await send({"type": "http.response.body", "body": body})

    return types.SimpleNamespace(
        ExportTraceServiceRequest=ExportTraceServiceRequest, KNOWN_SERVICE_NAMES=_KNOWN_SERVICE_NAMES,
        dump_span_attribute_value=dump_span_attribute_value, decode_anyvalue=_decode_otel_proto_anyvalue,
        convert=otlp_spans.converter(), MlflowException=MlflowException, handlers=handlers,
        TraceSource=TraceSource, TracesReceivedByServerEvent=TracesReceivedByServerEvent, record_event=_record_event,
        MLFLOW_PYTHON_CLIENT_USER_AGENT_PREFIX=_MLFLOW_PYTHON_CLIENT_USER_AGENT_PREFIX, answer_ok=answer_ok)


def _detail(status: int, detail: str):
    """FastAPI's answer to the HTTPException MLflow's handler raises."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": detail}, status_code=status)


def _route(mlflow_app) -> tuple[str, dict] | None:
    """MLflow's POST path of export_traces and the header names it reads, or None where this
    cannot be exact."""
    from fastapi.routing import APIRoute

    from mlflow.server import otel_api, otlp_metrics
    from mlflow.tracing.utils import otlp
    from mlflow.tracking.request_header import default_request_header_provider as agent
    from mlflow.utils.workspace_utils import WORKSPACE_HEADER_NAME

    from mlflow_gcp.server import view_swap

    if not view_swap.plain_mode():
        return None
    metrics = ("SPANS_INGESTED", "INGESTION_ERRORS", "REQUEST_DURATION", "REQUEST_PAYLOAD_BYTES", "SPANS_PER_REQUEST")
    if any(getattr(otlp_metrics, name, None) is not None for name in metrics):
        return None
    if copied.digest(otel_api.export_traces) != COPIED_SOURCE:
        return None
    paths = []
    for r in mlflow_app.routes:
        # FastAPI keeps an included router as such (its prefix beside it); older ones copy its routes.
        router, context = getattr(r, "original_router", None), getattr(r, "include_context", None)
        prefix, routes = (context.prefix, router.routes) if router is not None else ("", [r])
        paths += [prefix + route.path for route in routes if isinstance(route, APIRoute)
                  and route.endpoint is otel_api.export_traces and route.methods == {"POST"}]
    if len(paths) != 1:
        return None
    names = {"experiment": otlp.MLFLOW_EXPERIMENT_ID_HEADER, "run": otlp.MLFLOW_RUN_ID_HEADER,
             "workspace": WORKSPACE_HEADER_NAME, "user_agent": agent._USER_AGENT}
    return paths[0], {k: v.lower().encode("latin-1") for k, v in names.items()}


def wrap(app, mlflow_app):
    """`app` with the plain OTLP export in front, or `app` itself where it cannot be exact
    (`mlflow_app`: MLflow's FastAPI app, whose routes give the path)."""
    try:
        route = _route(mlflow_app)
    except Exception as err:  # an MLflow that changed shape: keep its own path
        print(f"INFO direct OTLP export path off: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return app
    if route is None:
        return app
    return OtlpIngest(app, *route)
