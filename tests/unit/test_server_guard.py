"""server/guard.py in process: MLflow's own security middleware plus the cross-site rule and the
gateway switch, around an app that answers 200 to whatever reaches it (the real server is in
tests/integration/test_server_guard.py)."""

from __future__ import annotations

import pytest

from mlflow_gcp.server import guard

from tests.support.asgi_call import call

HOST = "mlflow.example"
REACHED = b"reached"


async def _inner(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": REACHED})


@pytest.fixture
def guarded(monkeypatch):
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", HOST)
    monkeypatch.delenv("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_AI_GATEWAY", "true")
    return guard.wrap(_inner)


PATHS = ["/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/model.pkl", "/api/2.0/mlflow/runs/log-batch",
         "/gateway/chat/mlflow/invocations", "/ajax-api/3.0/mlflow/gateway/secrets/create", "/graphql",
         "/v1/traces", "/static-files/index.html"]


@pytest.mark.parametrize("path", PATHS)
def test_a_forged_host_is_refused_on_every_path(guarded, path):
    assert call(guarded, "GET", path, {"Host": "rebind.attacker.example"})[0] == 403
    assert call(guarded, "GET", path, {"Host": HOST}) == (200, REACHED)


@pytest.mark.parametrize("path", PATHS)
def test_cross_site_writes_are_refused_on_every_path(guarded, path):
    browser = {"Host": HOST, "Content-Type": "text/plain", "Origin": "https://attacker.example",
               "Sec-Fetch-Site": "cross-site"}
    status, body = call(guarded, "POST", path, browser)
    assert (status, body) == (403, b"Cross-origin request blocked")
    # Without Origin, the fetch metadata alone says cross-site.
    no_origin = {k: v for k, v in browser.items() if k != "Origin"}
    assert call(guarded, "POST", path, no_origin)[0] == 403
    # As in MLflow, even the server's own origin writes only once configured (launch.cors_origins
    # does); a script (no browser headers) and a same-origin page without Origin pass.
    assert call(guarded, "POST", path, {**browser, "Origin": f"https://{HOST}", "Sec-Fetch-Site": "same-origin"})[0] == 403
    assert call(guarded, "POST", path, {"Host": HOST, "Content-Type": "application/json"}) == (200, REACHED)
    assert call(guarded, "POST", path, {"Host": HOST, "Sec-Fetch-Site": "same-origin"}) == (200, REACHED)
    # Reads stay MLflow's CORS answers' business (the browser keeps their bodies from the page).
    assert call(guarded, "GET", path, browser) == (200, REACHED)


def test_configured_origins_may_write(monkeypatch):
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", HOST)
    monkeypatch.setenv("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS", f"https://{HOST}")
    app = guard.wrap(_inner)
    headers = {"Host": HOST, "Origin": f"https://{HOST}", "Sec-Fetch-Site": "same-origin"}
    assert call(app, "POST", "/gateway/chat/mlflow/invocations", headers) == (200, REACHED)
    assert call(app, "POST", "/gateway/chat/mlflow/invocations", {**headers, "Origin": "https://x.example"})[0] == 403


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_with_a_list_of_origins_other_localhost_pages_are_refused(monkeypatch, method):
    # What local mode configures: its loopback names with its port.
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", "127.0.0.1:5000,localhost:5000")
    monkeypatch.setenv("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS", "http://127.0.0.1:5000,http://localhost:5000")
    app = guard.wrap(_inner)
    path = "/ajax-api/2.0/mlflow/experiments/search"
    page = {"Host": "127.0.0.1:5000", "Origin": "http://localhost:8888", "Sec-Fetch-Site": "same-site"}
    status, body = call(app, method, path, page)
    assert status == 403 and body != REACHED
    own = {**page, "Origin": "http://localhost:5000", "Sec-Fetch-Site": "same-origin"}
    assert call(app, method, path, own) == (200, REACHED)
    # Without a list (ALLOWED_HOSTS unset or *), MLflow's localhost trust stands.
    monkeypatch.delenv("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS")
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", "*")
    assert call(guard.wrap(_inner), method, path, page) == (200, REACHED)


@pytest.mark.parametrize("path", ["/gateway/chat/mlflow/invocations", "/gateway/mlflow/v1/chat/completions",
                                  "/api/3.0/mlflow/gateway/secrets/create", "/ajax-api/3.0/mlflow/gateway/secrets/config",
                                  "/ajax-api/2.0/mlflow/gateway-proxy"])
def test_the_gateway_answers_404_while_off(monkeypatch, path):
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", HOST)
    monkeypatch.setenv("MLFLOW_ENABLE_AI_GATEWAY", "false")
    app = guard.wrap(_inner)
    status, body = call(app, "POST", path, {"Host": HOST, "Content-Type": "application/json"})
    assert status == 404 and b"AI gateway is off" in body
    monkeypatch.setenv("MLFLOW_ENABLE_AI_GATEWAY", "true")
    assert call(app, "POST", path, {"Host": HOST, "Content-Type": "application/json"}) == (200, REACHED)


@pytest.mark.parametrize("path", ["/api/2.0/mlflow/experiments/search", "/gatewayx", "/ajax-api/2.0/mlflow/gateways",
                                  "/static-files/gateway/x.js"])
def test_other_paths_are_not_the_gateway(path):
    assert not guard.is_gateway_path(path)


def test_mlflows_middleware_leaves_its_app_for_the_guard(monkeypatch):
    from fastapi import FastAPI
    from mlflow.server.fastapi_security import HostValidationMiddleware, init_fastapi_security

    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", HOST)
    inner = FastAPI()
    init_fastapi_security(inner)

    @inner.middleware("http")
    async def other(request, call_next):  # not MLflow's security: stays
        return await call_next(request)

    assert guard.take_from(inner) == 4
    assert [m.cls.__name__ for m in inner.user_middleware] == ["BaseHTTPMiddleware"]
    layers, app = [], guard.wrap(_inner)
    while hasattr(app, "app"):
        layers.append(type(app))
        app = app.app
    assert layers[0] is HostValidationMiddleware  # the outermost layer
