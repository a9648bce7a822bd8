"""server/plain_middleware.py: MLflow's two http middleware functions, installed by MLflow's own
code on a small FastAPI app, answer every request as before the swap; the usual request skips
BaseHTTPMiddleware, a request with the workspace header or on a gateway path does not."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse

from mlflow_gcp.server import plain_middleware

from tests.support.asgi_call import call as asgi_call


def mlflow_like_app(swap: bool) -> FastAPI:
    """MLflow's two functions, added as create_fastapi_app adds them, before two routes that
    report the request's workspace context as the handlers see it."""
    from mlflow.server.fastapi_app import add_fastapi_workspace_middleware, add_gateway_timing_middleware
    from mlflow.utils.workspace_context import get_request_workspace, is_request_workspace_resolved

    app = FastAPI()
    add_fastapi_workspace_middleware(app)
    add_gateway_timing_middleware(app)

    async def context():
        return JSONResponse({"workspace": get_request_workspace(), "resolved": is_request_workspace_resolved()})

    app.add_api_route("/api/2.0/mlflow/experiments/get", context, methods=["GET"])
    app.add_api_route("/gateway/chat/mlflow/invocations", context, methods=["GET"])
    if swap:
        assert plain_middleware.install(app) == 2
    return app


def call(app, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    status, body = asgi_call(app, "GET", path, headers)
    return status, json.loads(body)


@pytest.fixture
def base_calls(monkeypatch):
    """How many requests went through a BaseHTTPMiddleware."""
    seen = []
    original = BaseHTTPMiddleware.__call__

    async def counting(self, scope, receive, send):
        if scope["type"] == "http":
            seen.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(BaseHTTPMiddleware, "__call__", counting)
    return seen


CASES = [
    ("/api/2.0/mlflow/experiments/get", {}, 0),
    # workspaces are off: MLflow answers the header with its FEATURE_DISABLED error
    ("/api/2.0/mlflow/experiments/get", {"X-MLflow-Workspace": "team-a"}, 1),
    ("/api/2.0/mlflow/experiments/get", {"x-mlflow-workspace": " "}, 1),
    # the gateway's paths keep MLflow's timing function
    ("/gateway/chat/mlflow/invocations", {}, 1),
]


@pytest.mark.parametrize(("path", "headers", "through_base"), CASES)
def test_same_answers_and_the_usual_request_skips_base_http_middleware(monkeypatch, base_calls, path, headers,
                                                                      through_base):
    monkeypatch.delenv("MLFLOW_ENABLE_WORKSPACES", raising=False)
    expected = call(mlflow_like_app(swap=False), path, headers)
    stock_calls = len(base_calls)
    assert stock_calls == 2  # both of MLflow's functions, each in its BaseHTTPMiddleware
    base_calls.clear()
    assert call(mlflow_like_app(swap=True), path, headers) == expected
    assert len(base_calls) == through_base


def test_the_context_is_bound_for_the_handler_and_cleared_after(monkeypatch):
    from mlflow.utils.workspace_context import is_request_workspace_resolved

    monkeypatch.delenv("MLFLOW_ENABLE_WORKSPACES", raising=False)
    assert call(mlflow_like_app(swap=True), "/api/2.0/mlflow/experiments/get", {}) == (
        200, {"workspace": None, "resolved": True})
    assert not is_request_workspace_resolved()


def test_nothing_is_swapped_with_workspaces_on_or_a_built_stack(monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    from mlflow.server.fastapi_app import add_fastapi_workspace_middleware, add_gateway_timing_middleware

    app = FastAPI()
    add_fastapi_workspace_middleware(app)
    add_gateway_timing_middleware(app)
    assert plain_middleware.install(app) == 0
    monkeypatch.delenv("MLFLOW_ENABLE_WORKSPACES")
    app.middleware_stack = app.build_middleware_stack()
    assert plain_middleware.install(app) == 0
