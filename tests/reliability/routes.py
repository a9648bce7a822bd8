"""Every route MLflow's server serves (3.17.x): the Flask url_map and the FastAPI routers, each
with its methods and its path parameters filled with a harmless value.

Read in a subprocess: building MLflow's app imports most of MLflow, which the test process
should not keep resident.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys

_SCRIPT = r"""
import json, warnings
warnings.simplefilter("ignore")
from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import create_fastapi_app

out = set()
for rule in flask_app.url_map.iter_rules():
    for m in rule.methods - {"HEAD", "OPTIONS"}:
        out.add((m, rule.rule))
app = create_fastapi_app(flask_app)
for route in app.routes:
    contexts = getattr(route, "effective_route_contexts", None)
    if contexts is None:
        if getattr(route, "methods", None):
            out.update((m, route.path) for m in route.methods - {"HEAD", "OPTIONS"})
        continue
    for ctx in contexts():
        for m in (ctx.methods or ()):
            if m not in ("HEAD", "OPTIONS"):
                out.add((m, ctx.path))
print(json.dumps(sorted(out)))
"""

_FLASK_PARAM = re.compile(r"<(?:[a-z]+:)?([A-Za-z_]+)>")
_FASTAPI_PARAM = re.compile(r"\{([A-Za-z_]+)(?::[a-z]+)?\}")


def fill(path: str) -> str:
    return _FASTAPI_PARAM.sub("x", _FLASK_PARAM.sub("x", path)) or "/"


def mlflow_routes() -> list[tuple[str, str]]:
    """(method, concrete path) for every route of MLflow's server app."""
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"could not list MLflow's routes: {proc.stderr[-2000:]}")
    return sorted({(m, fill(p)) for m, p in json.loads(proc.stdout)})


def raw_request(base_url: str, method: str, path: str, headers: dict | None = None,
                body: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
    """Send `path` exactly as given (requests and urllib3 would normalise `..` and `%2e`)."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": f"{host}:{port}", **(headers or {})}
        if body is not None or method in ("POST", "PUT", "PATCH"):
            hdrs.setdefault("Content-Type", "application/json")
            hdrs["Content-Length"] = str(len(body or b""))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
