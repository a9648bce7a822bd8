"""MLflow's app without its AI gateway and assistant routers, for a server whose gateway is off.

Why: mlflow/server/fastapi_app.py imports both routers at module level, and with them the gateway's
providers (numpy), its guardrails (mlflow.metrics, which needs pandas) and the assistant's providers
(aiohttp): ~12 MiB of a worker and ~0.1 s of its start, for routes this server never serves while
the gateway is off (server/guard.py answers the gateway's paths 404; the assistant runs coding
agents on the server's host, which a Cloud Run service must not, and refuses remote callers).

`stand_ins()` puts small modules with the names fastapi_app takes from them into sys.modules while
it is imported: empty routers, and the two helpers its middleware and lifespan call. Afterwards
they are removed again, so code that imports one of these modules later gets MLflow's real one.
With the gateway on (service.gateway = true), none of this is used and MLflow's app is whole.
tests/unit/test_gateway_off.py checks that each stand-in has every name fastapi_app imports from
it, so an MLflow upgrade that imports another name fails a test instead of a worker.
"""

from __future__ import annotations

from mlflow_gcp.server import stand_in_modules


def _routers(name: str):
    from fastapi import APIRouter

    return {name: APIRouter()}


def _duration():
    import contextvars

    # Read only by the gateway's timing middleware for /gateway/ paths (answered 404 outside).
    return {"provider_call_duration_ms": contextvars.ContextVar("provider_call_duration_ms", default=0.0)}


def _sandbox():
    # Asked only to warn that a remote assistant runs without a sandbox; there is no assistant.
    return {"assistant_sandbox_enabled": lambda: False}


# module -> its names fastapi_app uses (the factories build them when the stand-ins are made).
STAND_INS = {
    "mlflow.server.gateway_api": lambda: _routers("gateway_router"),
    "mlflow.server.assistant.api": lambda: _routers("assistant_router"),
    "mlflow.gateway.providers.utils": _duration,
    "mlflow.assistant.providers.base": _sandbox,
}


def stand_ins(modules=STAND_INS):
    """Inside the block, `modules` not imported yet are small stand-ins (stand_in_modules.placed)."""
    return stand_in_modules.placed(modules, "mlflow-gcp stand-in: the AI gateway is off")
