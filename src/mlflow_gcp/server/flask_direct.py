"""StartTraceV3 (POST /api/3.0/mlflow/traces) handed to MLflow's Flask app directly, without
FastAPI's routing and middleware layers and the WSGI bridge's task group.

Why: MLflow's client sends one StartTraceV3 per trace, beside ~2 OTLP posts. MLflow's FastAPI app
serves it by trying every one of its routers before the catch-all mount of the Flask app, then
through Starlette's WSGI bridge (a task group, a sender task and a memory stream per request,
around the thread hop). With a store that does nothing, that path costs ~1.1 ms of CPU per
request here; Flask's own dispatch and MLflow's handler ~0.4 ms.

Here the same Flask app runs the same request: the WSGI environ the bridge builds
(starlette's build_environ), `flask_app.wsgi_app` in a worker thread (Flask's URL matching, MLflow's
before/teardown request hooks, the handler, its error handling), its status, headers and body sent
back as the bridge sends them (the body in one message). As the app's workspace middleware does for
a request without the workspace header, no workspace is bound around it. An exception Flask lets out
is answered as FastAPI's ServerErrorMiddleware answers it (500, "Internal Server Error") and raised
on to the server, which logs it. A request with a workspace header, an Origin, a body larger than
server/fastpath.py's MAX_BODY, and any other path or method go to MLflow's app unchanged; with
workspaces, artifacts-only mode or permissions on, nothing is taken. The guard, caller identity and
audit layers are outside this. tests/integration/test_otlp_ingest.py compares answers and rows with
stock MLflow.
"""

from __future__ import annotations

import sys

from mlflow_gcp.server import fastpath

_TO_MLFLOW = (b"origin", b"x-mlflow-workspace")


class FlaskDirect:
    """ASGI: POSTs to `paths` run by MLflow's Flask app in a worker thread, else `app`."""

    def __init__(self, app, flask_app, paths: frozenset[str]):
        self.app = app
        self.flask_app = flask_app
        self.paths = paths
        from mlflow.utils.workspace_context import clear_server_request_workspace, set_server_request_workspace

        self.set_workspace, self.clear_workspace = set_server_request_workspace, clear_server_request_workspace

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths
                or any(name in _TO_MLFLOW for name, _ in scope["headers"])):
            await self.app(scope, receive, send)
            return
        body, more = await fastpath.read_body(receive)
        if body is None:
            return  # the client went away
        if more:
            await self.app(scope, fastpath.replay(body, more, receive), send)
            return
        await self._run(scope, body, send)

    async def _run(self, scope, body: bytes, send):
        import anyio
        from starlette.middleware.wsgi import build_environ

        environ = build_environ(scope, body)
        answer = {}

        def start_response(status: str, headers, exc_info=None):
            # As starlette's WSGIResponder.start_response turns them into ASGI's.
            code, _ = status.split(" ", 1)
            answer["status"] = int(code)
            answer["headers"] = [(name.strip().encode("ascii").lower(), value.strip().encode("ascii"))
                                 for name, value in headers]

        def run() -> bytes:
            chunks = self.flask_app.wsgi_app(environ, start_response)
            try:
                return b"".join(chunks)
            finally:
                if hasattr(chunks, "close"):
                    chunks.close()

        self.set_workspace(None)
        try:
            content = await anyio.to_thread.run_sync(run)
        except Exception:
            from starlette.responses import PlainTextResponse

            await PlainTextResponse("Internal Server Error", status_code=500)(scope, None, send)
            raise
        finally:
            self.clear_workspace()
        await send({"type": "http.response.start", "status": answer["status"], "headers": answer["headers"]})
        await send({"type": "http.response.body", "body": content})


def _paths(flask_app, mlflow_app) -> frozenset[str] | None:
    """MLflow's POST paths of StartTraceV3 that MLflow's FastAPI app (`mlflow_app`) hands to its
    mount of the Flask app, or None where this cannot be exact."""
    from starlette.routing import Match, Mount

    from mlflow.server import handlers

    from mlflow_gcp.server import view_swap

    paths = view_swap.view_paths(getattr(handlers, "_start_trace_v3", None), "POST")
    for path in paths:
        scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": []}
        first = next((r for r in mlflow_app.routes if r.matches(scope)[0] is not Match.NONE), None)
        if not isinstance(first, Mount) or first.path != "" or getattr(first.app, "app", None) is not flask_app:
            return None  # a FastAPI route of MLflow's (or another mount) serves it
    return paths or None


def wrap(app, mlflow_app):
    """`app` with StartTraceV3 handed to MLflow's Flask app directly, or `app` itself
    (`mlflow_app`: MLflow's FastAPI app, whose routes must hand these paths to the Flask app)."""
    try:
        from mlflow.server import app as flask_app

        paths = _paths(flask_app, mlflow_app)
    except Exception as err:  # an MLflow that changed shape: keep its own path
        print(f"INFO direct StartTraceV3 path off: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return app
    if paths is None:
        return app
    return FlaskDirect(app, flask_app, paths)
