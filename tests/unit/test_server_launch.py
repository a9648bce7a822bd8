"""The pure builders: the uvicorn argv and MLflow's server environment, the pool URI, log lines, local env."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from mlflow_gcp.server import accept_balance, launch, logs
from mlflow_gcp.server.env import settings_from_env
from mlflow_gcp.server.local import LocalOptions, local_env

PG = {"DB_URI": "postgresql://mlflow:hunter2@10.0.0.5/mlflow", "ARTIFACT_ROOT": "gs://acme-mlflow"}


def build(**env):
    return launch.build_command(settings_from_env({**PG, **env}), python="/py")


def opt(argv, flag):
    return argv[argv.index(flag) + 1]


def test_proxied_command():
    argv, env = build(DB_CONNECTIONS="4", WORKERS="2")
    assert argv[:3] == ["/py", "-m", "uvicorn"] and argv[-2:] == ["--factory", launch.APP_FACTORY]
    assert opt(argv, "--host") == "0.0.0.0" and opt(argv, "--port") == "8080"
    assert opt(argv, "--workers") == "2"
    assert env["_MLFLOW_SERVER_SERVE_ARTIFACTS"] == "true"
    assert env["_MLFLOW_SERVER_ARTIFACT_DESTINATION"] == "gs://acme-mlflow"
    assert env["_MLFLOW_SERVER_ARTIFACT_ROOT"] == "mlflow-artifacts:/"
    assert "MLFLOW_SERVER_ALLOWED_HOSTS" not in env  # MLflow's own localhost/private-IP default
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_connections_are_balanced_only_over_several_workers():
    assert build(WORKERS="2")[1][accept_balance.ENV] == "1"
    assert accept_balance.ENV not in build(WORKERS="1")[1]


def test_direct_command():
    _, env = build(ARTIFACT_MODE="direct")
    assert "_MLFLOW_SERVER_SERVE_ARTIFACTS" not in env
    assert env["_MLFLOW_SERVER_ARTIFACT_ROOT"] == "gs://acme-mlflow"


def test_backend_uri_carries_the_budgeted_pool_even_with_zero_overflow():
    argv, env = build(DB_POOL_SIZE="2", DB_MAX_OVERFLOW="0", WORKERS="2")
    url = make_url(env["_MLFLOW_SERVER_FILE_STORE"])
    assert env["_MLFLOW_SERVER_REGISTRY_STORE"] == env["_MLFLOW_SERVER_FILE_STORE"]
    assert url.drivername == "postgresql+psycopg2" and url.password == "hunter2"
    assert url.query == {"plugin": "mlflow_gcp_pool", "mlflow_gcp_pool_size": "2", "mlflow_gcp_max_overflow": "0"}
    # MLflow's app behind the limiter: 2 connections serve one database request at a time.
    assert argv[-1] == launch.APP_FACTORY and env["MLFLOW_GCP_DB_CONCURRENCY"] == "1"


@pytest.mark.parametrize(("connections", "concurrency"), [(2, 1), (3, 1), (4, 2), (20, 10)])
def test_db_concurrency_leaves_each_request_two_connections(connections, concurrency):
    from mlflow_gcp import budget

    assert launch.db_concurrency(budget.pool_for(connections, 1)) == concurrency


def test_sqlite_runs_mlflows_app_unwrapped():
    s = settings_from_env({"DB_URI": "sqlite:////d/mlflow.db", "ARTIFACT_ROOT": "/d/a"})
    _, env = launch.build_command(s)
    assert "MLFLOW_GCP_DB_CONCURRENCY" not in env


def test_sqlite_uri_is_passed_unchanged():
    s = settings_from_env({"DB_URI": "sqlite:////d/mlflow.db", "ARTIFACT_ROOT": "/d/a"})
    _, env = launch.build_command(s)
    assert env["_MLFLOW_SERVER_FILE_STORE"] == "sqlite:////d/mlflow.db"


def test_allowed_hosts_keep_local_access():
    _, env = build(ALLOWED_HOSTS="mlflow-x-ew.a.run.app,*.example.com")
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert hosts[:2] == ["mlflow-x-ew.a.run.app", "*.example.com"]
    for local in ("localhost:*", "127.0.0.1:*", "localhost", "127.0.0.1"):
        assert local in hosts
    _, env = build(ALLOWED_HOSTS="*")
    assert env["MLFLOW_SERVER_ALLOWED_HOSTS"] == "*"


def test_the_ui_origin_is_allowed_for_state_changing_requests():
    from mlflow.server.security_utils import should_block_cors_request

    _, env = build(ALLOWED_HOSTS="mlflow-x-ew.a.run.app")
    origins = env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"].split(",")
    assert not should_block_cors_request("https://mlflow-x-ew.a.run.app", "POST", origins)
    assert should_block_cors_request("https://evil.example.com", "POST", origins)
    _, env = build()
    assert "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS" not in env


def test_allowed_host_patterns_match_as_mlflow_matches_them():
    # MLflow's own matcher (fnmatch for entries with '*'): *.run.app covers Cloud Run hosts.
    from mlflow.server.security_utils import is_allowed_host_header

    _, env = build(ALLOWED_HOSTS="*.run.app")
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert is_allowed_host_header(hosts, "mlflow-abc123-ew.a.run.app")
    assert is_allowed_host_header(hosts, "127.0.0.1:8080")
    assert is_allowed_host_header(hosts, "localhost:5000")
    assert not is_allowed_host_header(hosts, "evil.example.com")
    assert not is_allowed_host_header(hosts, "run.app.evil.com")


def test_describe_redacts_the_password():
    argv, env = build()
    line = launch.describe([*argv, env["_MLFLOW_SERVER_FILE_STORE"]])
    assert "hunter2" not in line and "mlflow:***@10.0.0.5" in line


def test_pool_plugin_applies_zero_overflow_and_strips_its_parameters():
    # In a fresh interpreter that "serves requests" (uvicorn imported), as a worker does.
    code = """
import uvicorn, sqlalchemy
from mlflow_gcp.server.pool import with_pool
e1 = sqlalchemy.create_engine(with_pool("postgresql+psycopg2://u:p@h/db", 2, 0), pool_size=5)
e2 = sqlalchemy.create_engine(with_pool("postgresql+psycopg2://u:p@h/db", 2, 0))
print(e1.pool.size(), e1.pool._max_overflow, e1.pool is e2.pool, e1.dialect is e2.dialect, dict(e1.url.query))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(None, 4) == ["2", "0", "True", "True", "{}\n"]


def test_pool_plugin_gives_non_serving_processes_no_idle_connections():
    code = """
import sqlalchemy
from mlflow_gcp.server.pool import with_pool
e = sqlalchemy.create_engine(with_pool("postgresql+psycopg2://u:p@h/db", 2, 0))
print(type(e.pool).__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "NullPool"


def test_supervisor_imports_stay_light():
    # The supervisor lives for the container's life: it must not load MLflow or SQLAlchemy.
    code = "import sys, mlflow_gcp.server.launch; print(sorted(m for m in ('mlflow','sqlalchemy','alembic','mlflow_gcp.cli','mlflow_gcp.gcp') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_server_package_does_not_import_the_control_plane():
    src = Path(launch.__file__).parent
    for path in src.glob("*.py"):
        text = path.read_text()
        for layer in ("cli", "ops", "plan", "gcp"):
            assert f"mlflow_gcp.{layer}" not in text, f"{path.name} imports mlflow_gcp.{layer}"


def test_json_log_line_has_severity_and_redacted_message(capsys):
    log = logs.setup("json", logging.INFO)
    log.warning("cannot reach %s", "postgresql+psycopg2://u:hunter2@h/db")
    line = capsys.readouterr().err.strip()
    entry = json.loads(line)
    assert entry["severity"] == "WARNING"
    assert entry["message"] == "cannot reach postgresql+psycopg2://u:***@h/db"


@pytest.mark.parametrize(
    ("line", "severity"),
    [
        ("2026/11/28 14:34:08 INFO:     Started server process [1]", "INFO"),
        ("2026/11/28 14:34:08 ERROR mlflow.server: boom", "ERROR"),
        ("Traceback (most recent call last):", "ERROR"),
        ("[MLflow] Security middleware enabled", "INFO"),
    ],
)
def test_child_output_severity(line, severity):
    assert launch._severity(line, "INFO") == severity


def test_local_env_defaults(tmp_path):
    env = local_env(LocalOptions(data_dir=tmp_path / "d"))
    assert env == {
        "DB_URI": f"sqlite:///{tmp_path}/d/mlflow.db",
        "ARTIFACT_ROOT": f"{tmp_path}/d/artifacts",
        "HOST": "127.0.0.1",
        "PORT": "5000",
        "WORKERS": "1",
        "DB_MIGRATE": "auto",
        "LOG_FORMAT": "text",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,[::1],127.0.0.1:5000,localhost:5000,[::1]:5000",
        "GATEWAY": "off",
    }
    # What local mode builds is what the entrypoint accepts.
    assert settings_from_env(env).db_kind == "sqlite"


def test_local_mode_accepts_loopback_hosts_only_unless_widened(tmp_path):
    from mlflow.server.security_utils import is_allowed_host_header

    def hosts(**opts) -> list[str]:
        _argv, env = launch.build_command(settings_from_env(local_env(LocalOptions(data_dir=tmp_path, port=5123, **opts))))
        return env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")

    default = hosts()
    for host in ("127.0.0.1:5123", "localhost:5123", "[::1]:5123", "localhost"):
        assert is_allowed_host_header(default, host), host
    # MLflow's own defaults (no list) let these in: they are DNS names a rebinding page controls.
    for host in ("10.attacker.example:5123", "192.168.attacker.example", "fd00.attacker.example", "mlflow.lan:5123"):
        assert not is_allowed_host_header(default, host), host
    widened = hosts(allowed_hosts=("mlflow.lan:5123",))
    assert is_allowed_host_header(widened, "mlflow.lan:5123") and is_allowed_host_header(widened, "127.0.0.1:5123")


def test_local_env_postgres_and_emulator(tmp_path):
    opts = LocalOptions(data_dir=tmp_path, backend_store_uri="postgresql://postgres@127.0.0.1/x", gcs_emulator=True)
    env = local_env(opts, emulator_host="http://127.0.0.1:9023")
    assert env["DB_URI"] == "postgresql+psycopg2://postgres@127.0.0.1/x"
    assert env["ARTIFACT_ROOT"] == "gs://mlflow-local"
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9023"
    settings_from_env(env)


def test_concurrency_limit_queues_database_requests_only():
    import asyncio

    from mlflow_gcp.server.app import DatabaseConcurrencyLimit

    inside = {"now": 0, "max": 0}

    async def app(scope, receive, send):
        inside["now"] += 1
        inside["max"] = max(inside["max"], inside["now"])
        await asyncio.sleep(0.01)
        inside["now"] -= 1

    limited = DatabaseConcurrencyLimit(app, 2)

    async def main(path, n):
        await asyncio.gather(*(limited({"type": "http", "path": path}, None, None) for _ in range(n)))

    asyncio.run(main("/api/2.0/mlflow/runs/log-batch", 10))
    assert inside["max"] == 2
    inside["max"] = 0
    asyncio.run(main("/api/2.0/mlflow-artifacts/artifacts/1/a/model.bin", 10))
    assert inside["max"] == 10  # artifact transfers never wait for a database slot
    inside["max"] = 0
    asyncio.run(main("/health", 5))
    assert inside["max"] == 5


def test_head_revision_read_from_files_is_mlflows():
    from mlflow.store.db.utils import _get_latest_schema_revision

    from mlflow_gcp.server.migrate import head_revision_from_files

    assert head_revision_from_files() == _get_latest_schema_revision()


def test_headers_leave_only_with_the_first_body_message():
    import asyncio

    from mlflow_gcp.server.app import HeadersWithBody

    sent, seen_at_start = [], []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen_at_start.append(list(sent))  # nothing may have left yet
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        await send({"type": "http.response.body", "body": b"}"})

    async def failing(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("store failed after the handler chose 200")

    async def record(message):
        sent.append(message["type"])

    asyncio.run(HeadersWithBody(app)({"type": "http", "path": "/x"}, None, record))
    assert seen_at_start == [[]]
    assert sent == ["http.response.start", "http.response.body", "http.response.body"]
    sent.clear()
    with pytest.raises(RuntimeError):
        asyncio.run(HeadersWithBody(failing)({"type": "http", "path": "/x"}, None, record))
    assert sent == []  # no headers out: uvicorn can still answer 500, which clients retry


def test_local_gateway_passphrase_is_made_once_and_private(tmp_path):
    from mlflow_gcp.server.local import gateway_passphrase

    path = tmp_path / "gateway-passphrase"
    first = gateway_passphrase(path)
    assert len(first) >= 43 and (path.stat().st_mode & 0o777) == 0o600
    assert gateway_passphrase(path) == first  # kept: keys encrypted with it stay readable


def test_the_app_is_built_with_the_collector_paused_and_leaves_it_running(monkeypatch):
    import gc

    from mlflow_gcp.server import app as worker_app

    seen = []

    def build():
        seen.append(gc.isenabled())
        raise RuntimeError("no app")

    monkeypatch.setattr(worker_app, "_build_app", build)
    assert gc.isenabled()
    try:
        with pytest.raises(RuntimeError):
            worker_app.create_app()
        assert seen == [False] and gc.isenabled()  # on again, even when the build failed
        assert gc.get_freeze_count() > 0  # what the build made is out of later collections' way
    finally:
        gc.unfreeze()
