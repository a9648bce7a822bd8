"""MLflow's two `@app.middleware("http")` functions (fastapi_app.py: the workspace context and
the gateway timing) run as plain ASGI for the usual request, and as themselves otherwise.

Why: Starlette runs an `http` middleware function through BaseHTTPMiddleware, which per request
builds a Request, a memory stream, a task group and a task for the rest of the app, and pipes the
answer back through a streaming response. For a request neither function acts on, that is all the
two do. Under the bench's trace ingest (MLflow's client: two OTLP posts and one StartTraceV3 per
8-span trace) py-spy on our worker in GIL mode put ~18% of the worker's CPU in that machinery.

Here, with workspaces off (the only way this server runs MLflow), the usual request gets what the
two functions do for it, without the machinery:
- workspace: no X-MLFLOW-WORKSPACE header and workspaces off, so MLflow resolves no workspace;
  it binds None to the request's context (set_server_request_workspace) around the rest of the
  app and clears it after, as the function does.
- gateway timing: a path outside /gateway/ goes straight on, as the function sends it.
A request with the workspace header (MLflow answers it with its error) or on a gateway path goes
through MLflow's own function, in its BaseHTTPMiddleware, unchanged.
"""

from __future__ import annotations

import sys

_WORKSPACE_HEADER = b"x-mlflow-workspace"


class _Workspace:
    def __init__(self, app, original):
        self.app = app
        self.original = original  # MLflow's function in its BaseHTTPMiddleware, around `app`
        from mlflow.utils.workspace_context import clear_server_request_workspace, set_server_request_workspace

        self.set, self.clear = set_server_request_workspace, clear_server_request_workspace

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or any(name == _WORKSPACE_HEADER for name, _ in scope["headers"]):
            await self.original(scope, receive, send)
            return
        self.set(None)
        try:
            await self.app(scope, receive, send)
        finally:
            self.clear()


class _GatewayTiming:
    def __init__(self, app, original, prefix: str):
        self.app = app
        self.original = original
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(self.prefix):
            await self.original(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _factory(plain, dispatch, *extra):
    """A middleware class for Starlette's stack: `plain` around `app`, keeping MLflow's own
    BaseHTTPMiddleware(app, dispatch) for the requests it does not take."""
    from starlette.middleware.base import BaseHTTPMiddleware

    def build(app):
        return plain(app, BaseHTTPMiddleware(app, dispatch=dispatch), *extra)

    return build


def install(mlflow_app) -> int:
    """Swap the two functions' entries in MLflow's FastAPI app (before its stack is built) for
    the plain ones; the number swapped. Nothing is swapped when MLflow's pieces are not the ones
    this was written for (then MLflow's own middleware stays)."""
    try:
        from starlette.middleware import Middleware
        from starlette.middleware.base import BaseHTTPMiddleware

        from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
        from mlflow.server import fastapi_app
        from mlflow.server.handlers import _add_static_prefix
        from mlflow.utils.workspace_utils import WORKSPACE_HEADER_NAME

        if (getattr(mlflow_app, "middleware_stack", None) is not None or MLFLOW_ENABLE_WORKSPACES.get()
                or WORKSPACE_HEADER_NAME.lower().encode() != _WORKSPACE_HEADER):
            return 0
        plain = {"workspace_context_middleware": (_Workspace,),
                 "gateway_timing_middleware": (_GatewayTiming, _add_static_prefix("/gateway/"))}
        swapped = 0
        for n, entry in enumerate(mlflow_app.user_middleware):
            dispatch = entry.kwargs.get("dispatch")
            if (entry.cls is not BaseHTTPMiddleware or entry.args or list(entry.kwargs) != ["dispatch"]
                    or getattr(dispatch, "__module__", None) != fastapi_app.__name__
                    or dispatch.__name__ not in plain):
                continue
            cls, *extra = plain.pop(dispatch.__name__)
            mlflow_app.user_middleware[n] = Middleware(_factory(cls, dispatch, *extra))
            swapped += 1
        return swapped
    except Exception as err:  # an MLflow that changed shape: its own middleware stays
        print(f"INFO plain http middleware off: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 0
