"""The one guard in front of every route the server answers (docs/security.md, "Server guard").

It is MLflow's own security middleware (Host check against DNS rebinding, CORS answers, security
headers: what `init_fastapi_security` installs, with the same settings), moved from inside
MLflow's FastAPI app to the outside of the whole ASGI app we serve, plus two rules MLflow lacks:

- **Cross-site writes refused on every path.** MLflow blocks a state-changing request from a
  foreign Origin only under /api and /ajax-api; its AI gateway (/gateway/...) and the other
  FastAPI routers read JSON bodies whatever the content type, so a page could POST there with a
  "simple" text/plain request that needs no preflight. Here MLflow's own rule
  (`should_block_cors_request`: localhost and configured origins pass) applies to every path, and
  a request a browser marks `Sec-Fetch-Site: cross-site` without an Origin is refused too.
- **Only the server's own origins, once it has a list.** MLflow trusts every localhost origin
  (reads through its CORS answers, and writes), so any page served on another localhost port
  could use `mlflow-gcp local`. When the origins are configured (server/launch.py derives them
  from ALLOWED_HOSTS; local mode's are its loopback names with its port), a request whose Origin
  is not one of them is refused whatever its method (MLflow's CORS middleware, outside, may
  still bless a preflight: the request that follows is refused, and its answer carries nothing).
- **The AI gateway answers 404 unless the deployment turned it on** (MLFLOW_ENABLE_AI_GATEWAY,
  set by server/launch.py from GATEWAY): its invocation routes, its management API and the
  deployments proxy. MLflow's own switch answers 501 with a hint about a variable our users do
  not set.

Why outside: our fast paths (server/fastpath.py, server/artifacts_stream.py) answer some requests
before they reach MLflow's app, so a guard inside it skipped them: a forged Host got a streamed
artifact answered 200 while experiments/search got 403. One guard, outermost, checks everything
once; the same middleware left inside MLflow's app would be a second copy, so it is taken out.
(MLflow's Flask app keeps its own hooks: that is MLflow's app, behind this guard.)
"""

from __future__ import annotations

import re

_STATE_CHANGING = frozenset(("POST", "PUT", "PATCH", "DELETE"))
# MLflow's AI gateway: invocation routes, management API, legacy deployments proxy.
_GATEWAY_PATH_RE = re.compile(
    r"^/(?:gateway(?:/|$)|(?:api|ajax-api)/[0-9.]+/mlflow/gateway(?:/|-proxy(?:/|$)|$))"
)
GATEWAY_OFF_BODY = (
    b'{"error_code": "ENDPOINT_NOT_FOUND", "message": "The AI gateway is off on this server '
    b'(mlflow-gcp: service.gateway in mlflow-gcp.toml, or `mlflow-gcp local --gateway`)."}'
)


def is_gateway_path(path: str) -> bool:
    return bool(_GATEWAY_PATH_RE.match(path))


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class _Recorder:
    """Stands in for the app `init_fastapi_security` configures, to learn its middleware."""

    def __init__(self):
        self.middleware: list[tuple[type, dict]] = []

    def add_middleware(self, cls, **kwargs) -> None:
        self.middleware.append((cls, kwargs))


class CrossSiteWrites:
    """ASGI: state-changing requests a browser sends from another site are refused, on any path,
    and with a list of origins, any request from an origin not on it."""

    def __init__(self, app, allowed_origins: list[str]):
        self.app = app
        self.allowed_origins = allowed_origins
        self.strict = bool(allowed_origins) and "*" not in allowed_origins

    def _listed(self, origin: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatch(origin, o) if "*" in o else origin == o for o in self.allowed_origins)

    def blocked(self, scope) -> bool:
        from mlflow.server.security_utils import should_block_cors_request

        origin = _header(scope, b"origin")
        if origin is not None and self.strict and not self._listed(origin):
            return True
        if scope.get("method") not in _STATE_CHANGING:
            return False
        if origin is not None:
            return should_block_cors_request(origin, scope["method"], self.allowed_origins)
        # No Origin (an old browser, or one that dropped it): its fetch metadata still says.
        return _header(scope, b"sec-fetch-site") == "cross-site" and "*" not in self.allowed_origins

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.blocked(scope):
            from mlflow.server.security_utils import CORS_BLOCKED_MSG

            await _answer(send, 403, b"text/plain", CORS_BLOCKED_MSG.encode())
            return
        await self.app(scope, receive, send)


class GatewaySwitch:
    """ASGI: the AI gateway's routes answer 404 while the gateway is off."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        from mlflow.environment_variables import MLFLOW_ENABLE_AI_GATEWAY

        if scope["type"] == "http" and not MLFLOW_ENABLE_AI_GATEWAY.get() and is_gateway_path(scope["path"]):
            await _answer(send, 404, b"application/json", GATEWAY_OFF_BODY)
            return
        await self.app(scope, receive, send)


async def _answer(send, status: int, content_type: bytes, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _mlflow_security() -> list[tuple[type, dict]]:
    """The middleware MLflow's `init_fastapi_security` adds, in the order it adds them."""
    from mlflow.server.fastapi_security import init_fastapi_security

    recorder = _Recorder()
    init_fastapi_security(recorder)
    return recorder.middleware


def take_from(mlflow_app) -> int:
    """Remove MLflow's security middleware from its FastAPI app (the guard outside replaces it);
    the number removed. Nothing is removed once the app has built its middleware stack."""
    if getattr(mlflow_app, "middleware_stack", None) is not None:
        return 0
    classes = {cls for cls, _kwargs in _mlflow_security()}
    kept = [m for m in mlflow_app.user_middleware if m.cls not in classes]
    removed = len(mlflow_app.user_middleware) - len(kept)
    mlflow_app.user_middleware[:] = kept
    return removed


def wrap(app):
    """`app` behind the guard: MLflow's Host check outermost, then its CORS answers and security
    headers (so an API write from a foreign origin gets exactly MLflow's refusal), then the
    cross-site rule and the gateway switch."""
    from mlflow.server.fastapi_security import get_allowed_origins

    app = CrossSiteWrites(GatewaySwitch(app), get_allowed_origins())
    for cls, kwargs in _mlflow_security():  # first added innermost, as Starlette builds it
        app = cls(app, **kwargs)
    return app
