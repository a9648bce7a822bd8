"""The tuned launch: uvicorn started directly must get exactly what `mlflow server` would give it.

MLflow's own CLI runs in a subprocess with its process spawner replaced by a recorder (nothing is
started), for the same settings; the recorded uvicorn options and worker environment must equal
ours, apart from the three options we add on purpose (our HTTP protocol, no access log, our app
factory). A new variable in a future MLflow makes this fail instead of a deployment.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from mlflow_gcp.server import accept_balance, launch
from mlflow_gcp.server.env import settings_from_env

# Read by our own code only, or (the gateway switch) set by us where `mlflow server` has no option.
OURS = ("MLFLOW_GCP_DB_CONCURRENCY", "MLFLOW_GCP_BULK_STORE", launch.GATEWAY_ENV, accept_balance.ENV)

RECORD = r"""
import json, os, sys
import mlflow.server, mlflow.server.handlers, mlflow.tracing.trace_rollup_service as rollups
from click.testing import CliRunner
from mlflow.cli import cli

seen = {}
class Proc:
    def poll(self): return 0
    def wait(self): return 0
def record(cmd, extra_env=None, **_):
    seen["cmd"], seen["env"] = cmd, dict(extra_env or {})
    return Proc()
mlflow.server._exec_cmd = record
# Both touch the database; our entrypoint migrates and checks the schema before it launches.
mlflow.server.handlers.initialize_backend_stores = lambda *a, **k: None
rollups.validate_sql_trace_rollup_startup = lambda *a, **k: None
before = dict(os.environ)
result = CliRunner().invoke(cli, ["server", *json.loads(sys.argv[1])], catch_exceptions=False)
assert result.exit_code == 0, result.output
seen["environ"] = {k: v for k, v in os.environ.items() if before.get(k) != v}
print("RECORDED" + json.dumps(seen))
"""

CASES = {
    "proxied, pooled, 2 workers": {"DB_URI": "postgresql://u:pw@10.0.0.5/mlflow", "ARTIFACT_ROOT": "gs://b-1/p",
                                   "WORKERS": "2", "DB_CONNECTIONS": "8"},
    "direct, allowed hosts": {"DB_URI": "postgresql://u:pw@10.0.0.5/mlflow", "ARTIFACT_ROOT": "gs://b-1",
                              "ARTIFACT_MODE": "direct", "ALLOWED_HOSTS": "*.run.app,x.example.com"},
    "sqlite, local dir": {"DB_URI": "sqlite:////tmp/nothere/mlflow.db", "ARTIFACT_ROOT": "/tmp/nothere/a",
                          "HOST": "127.0.0.1", "PORT": "5000"},
}


def mlflow_would_run(settings) -> dict:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MLFLOW_", "_MLFLOW"))}
    env.update(launch.FIXED_ENV)
    out = subprocess.run(
        [sys.executable, "-c", RECORD, json.dumps(launch.mlflow_server_args(settings))],
        env=env, capture_output=True, text=True, timeout=120,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RECORDED")), None)
    assert line, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(line[len("RECORDED"):])


@pytest.mark.parametrize("case", CASES)
def test_uvicorn_gets_what_mlflow_server_would_give_it(case):
    settings = settings_from_env(CASES[case])
    argv, env = launch.build_command(settings)
    seen = mlflow_would_run(settings)

    # The command: same interpreter and uvicorn options, plus ours, and our factory wrapping
    # MLflow's FastAPI app (app.create_app returns mlflow.server.fastapi_app:app).
    theirs = seen["cmd"]
    assert theirs[:3] == [sys.executable, "-m", "uvicorn"] and theirs[-1] == "mlflow.server.fastapi_app:app"
    ours = list(argv)
    for extra in (["--no-access-log"], ["--http", launch.HTTP_PROTOCOL], ["--factory", launch.APP_FACTORY]):
        i = ours.index(extra[0])
        assert ours[i : i + len(extra)] == extra
        del ours[i : i + len(extra)]
    assert ours == theirs[:-1]

    # The workers' environment: what _run_server passes plus what the CLI sets in os.environ.
    expected = {**seen["environ"], **seen["env"]}
    for name in launch.FIXED_ENV:
        expected.pop(name, None)
    got = {k: v for k, v in env.items() if k not in launch.FIXED_ENV and k not in OURS}
    assert set(got) == set(expected)
    assert len(got.pop("_MLFLOW_SERVER_BOOT_ID")) == len(expected.pop("_MLFLOW_SERVER_BOOT_ID")) == 32
    assert got == expected


def test_boot_id_is_fresh_per_launch():
    settings = settings_from_env(CASES["sqlite, local dir"])
    assert launch.build_command(settings)[1]["_MLFLOW_SERVER_BOOT_ID"] != launch.build_command(settings)[1]["_MLFLOW_SERVER_BOOT_ID"]


def test_no_delay_protocol_sets_tcp_nodelay_on_accepted_connections():
    # A real listening socket made the way uvicorn makes it for several workers (proto 0), a real
    # connection, and the protocol's connection_made on a transport over the accepted socket.
    import asyncio

    from mlflow_gcp.server.uvicorn_http import NoDelayHTTPProtocol
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    listener = socket.socket(socket.AF_INET)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    try:
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # the bug's premise

        class Transport(asyncio.Transport):
            def get_extra_info(self, name, default=None):
                return {"socket": conn, "peername": conn.getpeername(), "sockname": conn.getsockname()}.get(name, default)

        async def made():
            async def app(scope, receive, send):  # never called: no request is sent
                pass

            config = Config(app=app)
            config.load()
            proto = NoDelayHTTPProtocol(config=config, server_state=ServerState(), app_state={})
            proto.connection_made(Transport())

        asyncio.run(made())
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        for s in (conn, client, listener):
            s.close()


def test_compact_json_keeps_mlflows_values():
    # In a fresh interpreter: the switch changes a module global of MLflow's handlers.
    code = r"""
import json
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag
from mlflow.protos.service_pb2 import SearchRuns
from mlflow.server import handlers
from mlflow.utils.proto_json_utils import message_to_json
from mlflow_gcp.server.app import compact_json

info = RunInfo("r" * 32, "1", "u", "FINISHED", 1700000000000, 1700000009999, "active", "mlflow-artifacts:/x", run_name="n")
data = RunData([Metric("m", float("nan"), 2**40, -3), Metric("big", 1.7976931348623157e308, 1, 2**40)],
               [Param("p", "v")], [RunTag("t", "é")])
resp = SearchRuns.Response(next_page_token="tok")
resp.runs.extend([Run(info, data).to_proto()])
pretty = message_to_json(resp)
assert compact_json() and compact_json()  # idempotent
compact = handlers.message_to_json(resp)
assert json.dumps(json.loads(compact), sort_keys=True) == json.dumps(json.loads(pretty), sort_keys=True)
assert len(compact) < len(pretty) and "\n" not in compact
print("OK")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("OK"), out.stderr[-3000:]


def test_auth_module_stays_unavailable_without_permissions():
    # Flask-WTF is installed (for access.permissions), so MLflow's basic-auth module imports; but
    # with permissions off its app is not running, and search_runs, which only checks that the
    # module imports, would filter experiments through it. The app makes the import fail at once
    # (no module execution per request either).
    code = r"""
import importlib.util, os
assert importlib.util.find_spec("flask_wtf") is not None
os.environ.pop("MLFLOW_GCP_PERMISSIONS", None)
from mlflow_gcp.server.app import create_app
create_app()
import sys
assert sys.modules["mlflow.server.auth"] is None
try:
    from mlflow.server import auth
except ImportError:
    print("OK")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("OK"), out.stderr[-3000:]
