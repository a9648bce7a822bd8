"""The worker builds MLflow's app without importing alembic (server/deferred_alembic.py); MLflow's
schema functions still work through the stand-ins, importing the real alembic on first use."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys

import pytest

from mlflow_gcp.server import deferred_alembic

WORKER = """
import ast, json, os, sys
os.environ.pop("MLFLOW_GCP_PERMISSIONS", None)
os.environ["MLFLOW_ENABLE_AI_GATEWAY"] = {gateway!r}
from mlflow_gcp.server.app import create_app
create_app()
started = sorted(m for m in sys.modules if m.partition(".")[0] == "alembic")
# What the worker's modules import from alembic at module level (not inside functions).
imports = []
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None) or ""
    if not name.startswith("mlflow.") or not path.endswith(".py"):
        continue
    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.ImportFrom) and (child.module or "").partition(".")[0] == "alembic":
                imports.append([name, child.module, [a.name for a in child.names]])
            elif isinstance(child, ast.Import):
                imports.extend([name, a.name, None] for a in child.names if a.name.partition(".")[0] == "alembic")
            visit(child)
    visit(ast.parse(open(path, encoding="utf-8").read()))
# Real use after startup: an empty database gets MLflow's schema through the stand-ins.
import sqlalchemy
from mlflow.store.db import utils
engine = sqlalchemy.create_engine("sqlite:///" + os.path.join({tmp!r}, "mlflow.db"))
before = utils._get_schema_version(engine)
utils._initialize_tables(engine)
from alembic.migration import MigrationContext
print(json.dumps({{
    "started": started, "imports": imports, "before": before,
    "after": utils._get_schema_version(engine), "head": utils._get_latest_schema_revision(),
    "real": MigrationContext.__module__, "deferred": repr(utils.MigrationContext),
}}))
"""


def _worker(gateway: str, tmp) -> dict:
    code = WORKER.format(gateway=gateway, tmp=str(tmp))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("gateway", ["false", "true"])
def test_worker_starts_without_alembic_and_migrates_through_the_stand_ins(gateway, tmp_path):
    got = _worker(gateway, tmp_path)
    assert got["started"] == []
    # Every module-level alembic import of the worker's modules is one the stand-ins cover.
    assert got["imports"], "MLflow no longer imports alembic at module level: drop the stand-ins"
    for importer, module, names in got["imports"]:
        assert names is not None and set(names) <= set(deferred_alembic.STAND_INS.get(module, ())), importer
    # An empty database: the real alembic ran MLflow's migrations (what its store does then).
    assert got["before"] is None and got["after"] == got["head"]
    assert got["real"] == "alembic.runtime.migration"
    assert got["deferred"] == "<deferred alembic.migration.MigrationContext>"


def test_each_stand_in_names_what_mlflows_schema_module_imports():
    source = open(importlib.util.find_spec("mlflow.store.db.utils").origin).read()
    wanted = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alembic"):
            wanted.setdefault(node.module, set()).update(a.name for a in node.names)
    assert wanted == {module: set(names) for module, names in deferred_alembic.STAND_INS.items()}


def test_stand_ins_only_inside_the_block_and_never_over_a_loaded_module():
    import json as real_json

    with deferred_alembic.stand_ins({"json": ("dumps",), "mlflow_gcp_never_a_module.x": ("y",)}):
        from mlflow_gcp_never_a_module.x import y

        assert repr(y) == "<deferred mlflow_gcp_never_a_module.x.y>"
        assert sys.modules["json"] is real_json
    assert "mlflow_gcp_never_a_module.x" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        y.anything  # the real module is looked for on use, and there is none


def test_a_stand_in_used_inside_the_block_gives_way_to_the_real_module():
    with deferred_alembic.stand_ins({"json.decoder": ("JSONDecoder",)}):
        pass  # already imported: left alone
    name = "colorsys"  # a small stdlib module this process has not needed
    was = sys.modules.pop(name, None)
    try:
        with deferred_alembic.stand_ins({name: ("rgb_to_hsv",)}):
            from colorsys import rgb_to_hsv

            assert rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
            assert sys.modules[name].__doc__ != deferred_alembic._DOC  # the real one now
            real = sys.modules[name]
        assert sys.modules[name] is real  # not removed on the way out
        assert rgb_to_hsv.__name__ == "rgb_to_hsv"
    finally:
        if was is not None:
            sys.modules[name] = was
