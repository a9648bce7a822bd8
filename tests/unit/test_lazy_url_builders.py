"""Flask routes added inside `lazy_url_builders.rules()` build the same URLs, and fail the same way,
as Werkzeug's own eagerly compiled ones (server/lazy_url_builders.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from flask import Flask
from werkzeug.routing import BuildError

from mlflow_gcp.server import lazy_url_builders

ROUTES = [
    ("/health", "health", {}),
    ("/api/2.0/mlflow/runs/<run_id>", "run", {}),
    ("/files/<path:path>", "files", {}),
    ("/n/<int:n>/<float:x>", "numbers", {}),
    ("/page/", "page", {"page": 1}),
    ("/page/<int:page>", "page", {}),
    ("/m/<model_id>/artifacts/files", "model", {}),
]
CALLS = [
    ("health", {}), ("health", {"q": "a b", "x": ["1", "2"]}), ("run", {"run_id": "ab/c d"}),
    ("run", {}), ("files", {"path": "a/b c/ü.txt"}), ("numbers", {"n": 3, "x": 1.5}),
    ("numbers", {"n": "x", "x": 1.5}), ("page", {}), ("page", {"page": 1}), ("page", {"page": 4}),
    ("model", {"model_id": "m-1", "extra": "?&"}), ("nope", {}),
]


def _app() -> Flask:
    app = Flask("t")
    views = {}
    for rule, endpoint, defaults in ROUTES:
        view = views.setdefault(endpoint, lambda **_: "")
        app.add_url_rule(rule, endpoint, view, defaults=defaults or None)
    return app


def _builds(app: Flask) -> list:
    adapter = app.url_map.bind("example.com")
    out = []
    for endpoint, values in CALLS:
        for force_external in (False, True):
            try:
                out.append(adapter.build(endpoint, values, force_external=force_external))
            except (BuildError, ValueError) as err:
                out.append(type(err).__name__)
    return out


def test_lazy_rules_build_what_werkzeugs_build():
    eager = _app()
    with lazy_url_builders.rules():
        lazy = _app()
    assert type(next(lazy.url_map.iter_rules())).__name__ == "LazyBuilderRule"
    assert type(next(eager.url_map.iter_rules())).__name__ == "Rule"
    assert Flask.url_rule_class.__name__ == "Rule"  # restored
    assert _builds(lazy) == _builds(eager)
    assert _builds(lazy) == _builds(eager)  # and again, with the builders compiled


def test_without_werkzeugs_hook_nothing_changes():
    class Other:
        pass

    assert lazy_url_builders._lazy_rule_class(Other) is None


WORKER = """
import json, os
os.environ.pop("MLFLOW_GCP_PERMISSIONS", None)
from mlflow_gcp.server.app import create_app
create_app()
from mlflow.server import app
from werkzeug.routing import Map, Rule
lazy = app.url_map
eager = Map([Rule(r.rule, endpoint=r.endpoint, methods=r.methods, defaults=r.defaults)
             for r in lazy.iter_rules()])
a, b = lazy.bind("h"), eager.bind("h")
out = []
for r in lazy.iter_rules():
    values = {arg: "x y/1" for arg in r.arguments}
    out.append([a.build(r.endpoint, values, method=m) == b.build(r.endpoint, values, method=m)
                for m in sorted(r.methods or [None])])
print(json.dumps({"kind": type(next(lazy.iter_rules())).__name__, "rules": len(out),
                  "same": all(all(x) for x in out)}))
"""


def test_mlflows_routes_build_the_same_urls():
    out = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "MLFLOW_ENABLE_AI_GATEWAY": "false"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["kind"] == "LazyBuilderRule" and got["rules"] > 100 and got["same"]
