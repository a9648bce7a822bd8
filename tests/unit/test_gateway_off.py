"""With the gateway off, the worker builds MLflow's app without the gateway's and the assistant's
routers (server/gateway_off.py); with it on, MLflow's app is whole."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys

import pytest

from mlflow_gcp.server import gateway_off

WORKER = """
import json, os, sys
os.environ.pop("MLFLOW_GCP_PERMISSIONS", None)
os.environ["MLFLOW_ENABLE_AI_GATEWAY"] = {gateway!r}
from mlflow_gcp.server.app import create_app
create_app()
from mlflow.server.fastapi_app import app
def paths(routes, prefix=""):
    for r in routes:
        sub = getattr(r, "original_router", None)  # FastAPI includes routers lazily
        if sub is not None:
            yield from paths(sub.routes, prefix + r.include_context.prefix)
        else:
            yield prefix + getattr(r, "path", "")
paths = list(paths(app.routes))
loaded = sorted(m for m in ("aiohttp", *{stand_ins!r}) if m in sys.modules)
stand_ins_left = sorted(m for m in {stand_ins!r} if getattr(sys.modules.get(m), "__doc__", "") and
                        "stand-in" in sys.modules[m].__doc__)
# Code that needs one of these modules later gets MLflow's real one.
from mlflow.gateway.providers.utils import provider_call_duration_ms
from mlflow.assistant.providers.base import assistant_sandbox_enabled
print(json.dumps({{
    "gateway": any(p.startswith("/gateway/") for p in paths),
    "assistant": any("/mlflow/assistant/" in p for p in paths),
    "otel": any("/v1/traces" in p for p in paths),
    "artifacts": any("mlflow-artifacts" in p for p in paths),
    "loaded": loaded, "stand_ins_left": stand_ins_left,
}}))
"""


def _worker(gateway: str) -> dict:
    code = WORKER.format(gateway=gateway, stand_ins=tuple(gateway_off.STAND_INS))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_gateway_off_leaves_out_the_gateway_and_assistant_routers_only():
    got = _worker("false")
    assert (got["gateway"], got["assistant"]) == (False, False)
    assert (got["otel"], got["artifacts"]) == (True, True)  # the routes the server does serve
    assert got["loaded"] == [] and got["stand_ins_left"] == []


def test_gateway_on_builds_mlflows_whole_app():
    got = _worker("true")
    assert (got["gateway"], got["assistant"], got["otel"], got["artifacts"]) == (True, True, True, True)
    assert "aiohttp" in got["loaded"] and got["stand_ins_left"] == []


def test_each_stand_in_has_every_name_fastapi_app_imports_from_it():
    source = open(importlib.util.find_spec("mlflow.server.fastapi_app").origin).read()
    wanted = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in gateway_off.STAND_INS:
            wanted.setdefault(node.module, set()).update(a.name for a in node.names)
    assert set(wanted) == set(gateway_off.STAND_INS)  # each stand-in still stands for an import
    for module, names in wanted.items():
        assert names <= set(gateway_off.STAND_INS[module]()), module


def test_stand_ins_only_inside_the_block_and_never_over_a_loaded_module():
    import json as real_json

    with gateway_off.stand_ins({"json": lambda: {}, "mlflow_gcp_never_a_module.x": lambda: {"y": 1}}):
        from mlflow_gcp_never_a_module.x import y

        assert y == 1 and sys.modules["json"] is real_json
    assert "mlflow_gcp_never_a_module.x" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        __import__("mlflow_gcp_never_a_module.x")
