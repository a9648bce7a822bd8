"""Starting and stopping the entrypoint for real: bad environments, an unreachable database,
two instances racing on an empty database, DB_MIGRATE=never, the migration job, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from mlflow_gcp.server import local as local_mod
from tests.conftest import alive, clean_env, launch_server, process_tree

pytestmark = pytest.mark.slow

PASSWORD = "hunter2-Secret"


def run_entrypoint(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlflow_gcp.server", *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


PG_PARTS = {"DB_USER": "postgres", "DB_PASSWORD": PASSWORD, "DB_NAME": "mlflow", "DB_HOST": "127.0.0.1"}
GOOD = {**PG_PARTS, "ARTIFACT_ROOT": "gs://acme-mlflow"}

# Each case must fail before anything connects: (environment, variable named by the one line).
BAD_ENVIRONMENTS = [
    ({"ARTIFACT_ROOT": "gs://acme-mlflow"}, "DB_URI"),
    ({**GOOD, "DB_HOST": None, "DB_URI": f"mysql://u:{PASSWORD}@h/db"}, "DB_URI"),
    ({**GOOD, "DB_HOST": None, "DB_URI": f"postgresql://u:{PASSWORD}@h"}, "DB_URI"),
    ({**GOOD, "DB_USER": None}, "DB_USER"),
    ({**GOOD, "DB_PASSWORD": None}, "DB_PASSWORD"),
    ({**GOOD, "DB_NAME": None}, "DB_NAME"),
    ({**GOOD, "DB_HOST": None}, "INSTANCE_CONNECTION_NAME"),
    ({**GOOD, "DB_HOST": None, "INSTANCE_CONNECTION_NAME": "only-the-instance"}, "INSTANCE_CONNECTION_NAME"),
    ({**GOOD, "DB_PORT": "postgres"}, "DB_PORT"),
    ({**GOOD, "ARTIFACT_ROOT": None}, "ARTIFACT_ROOT"),
    ({**GOOD, "ARTIFACT_ROOT": "bucket-without-scheme"}, "ARTIFACT_ROOT"),
    ({**GOOD, "ARTIFACT_MODE": "both"}, "ARTIFACT_MODE"),
    ({**GOOD, "PORT": "http"}, "PORT"),
    ({**GOOD, "ALLOWED_HOSTS": "https://mlflow.run.app/"}, "ALLOWED_HOSTS"),
    ({**GOOD, "WORKERS": "100"}, "WORKERS"),
    ({**GOOD, "DB_CONNECTIONS": "many"}, "DB_CONNECTIONS"),
    ({**GOOD, "DB_CONNECTIONS": "3", "WORKERS": "2"}, "DB_CONNECTIONS"),
    ({**GOOD, "DB_POOL_SIZE": "1"}, "DB_POOL_SIZE"),
    ({**GOOD, "DB_POOL_SIZE": "2", "DB_MAX_OVERFLOW": "x"}, "DB_MAX_OVERFLOW"),
    ({**GOOD, "DB_MIGRATE": "yes"}, "DB_MIGRATE"),
    ({**GOOD, "DB_WAIT_SECONDS": "forever"}, "DB_WAIT_SECONDS"),
    ({**GOOD, "LOG_FORMAT": "yaml"}, "LOG_FORMAT"),
]


@pytest.mark.parametrize("log_format", ["json", "text"])
@pytest.mark.parametrize(("env", "name"), BAD_ENVIRONMENTS, ids=[n for _, n in BAD_ENVIRONMENTS])
def test_bad_environment_is_one_clear_line(env, name, log_format):
    env = {k: v for k, v in env.items() if v is not None}
    if name != "LOG_FORMAT":
        env["LOG_FORMAT"] = log_format
    result = run_entrypoint(env, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    if log_format == "json" or name == "LOG_FORMAT":
        entry = json.loads(line)
        assert entry["severity"] == "ERROR"
        line = entry["message"]
    assert line.startswith(f"{name}: ") and "expected" in line
    assert PASSWORD not in result.stderr


def test_unreachable_database_fails_after_bounded_logged_retries(tmp_path):
    port = local_mod.free_port()  # nothing listens there
    env = {**GOOD, "DB_PORT": str(port), "DB_WAIT_SECONDS": "2", "LOG_FORMAT": "json"}
    result = run_entrypoint(env)
    assert result.returncode == 3
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    retries = [e for e in entries if e["message"].startswith("database not reachable yet")]
    assert retries and all(e["severity"] == "WARNING" for e in retries)
    last = entries[-1]
    assert last["severity"] == "ERROR" and last["message"].startswith("database unreachable after")
    assert "DB_WAIT_SECONDS" in last["message"]
    # A paused deployment looks exactly like this from the server: say how to bring it back.
    assert "mlflow-gcp resume" in last["message"]
    assert PASSWORD not in result.stderr


def test_missing_database_fails_at_once(postgres_admin_url):
    env = {**GOOD, "DB_NAME": "mlflow_gcp_no_such_db", "DB_WAIT_SECONDS": "60", "LOG_FORMAT": "text"}
    started = time.monotonic()
    result = run_entrypoint(env)
    assert result.returncode == 3
    assert result.stderr.splitlines()[-1].startswith("database refused the connection:")
    assert "does not exist" in result.stderr
    assert time.monotonic() - started < 60  # it did not wait out DB_WAIT_SECONDS


def test_never_refuses_an_empty_database_then_migrate_job_then_check(new_database):
    from sqlalchemy.engine import make_url

    url = new_database()
    env = {"DB_URI": url, "ARTIFACT_ROOT": "gs://acme-mlflow", "DB_MIGRATE": "never", "LOG_FORMAT": "text"}
    refused = run_entrypoint(env)
    assert refused.returncode == 4
    assert refused.stderr.strip().splitlines()[-1].startswith("the database has no MLflow schema")
    assert "python -m mlflow_gcp.server migrate" in refused.stderr

    job = run_entrypoint({"DB_URI": url, "LOG_FORMAT": "text"}, "migrate")  # no ARTIFACT_ROOT needed
    assert job.returncode == 0, job.stderr
    assert "schema created at" in job.stderr
    again = run_entrypoint({"DB_URI": url, "LOG_FORMAT": "text"}, "migrate")
    assert again.returncode == 0 and "schema is current" in again.stderr

    check = run_entrypoint({"DB_URI": url, "LOG_FORMAT": "text"}, "check")
    assert check.returncode == 0 and "schema is current" in check.stderr
    assert make_url(url).database  # the database is dropped by the fixture at the end


def test_two_servers_on_an_empty_database_both_become_healthy(new_database, gcs_emulator, tmp_path):
    url = new_database()
    bucket = gcs_emulator.new_bucket()
    env = {
        "DB_URI": url,
        "ARTIFACT_ROOT": f"gs://{bucket}",
        "STORAGE_EMULATOR_HOST": gcs_emulator.host,
        "DB_POOL_SIZE": "1",
        "DB_MAX_OVERFLOW": "1",
    }
    procs = []
    try:
        for i in range(2):
            proc, port = launch_server(env, tmp_path / f"server{i}.log")
            procs.append((proc, port))
        for proc, port in procs:
            local_mod.wait_http(f"http://127.0.0.1:{port}/health", proc, local_mod.HEALTH_TIMEOUT, "server")
        logs = [(tmp_path / f"server{i}.log").read_text() for i in range(2)]
        # Exactly one created the schema; the other found it current once it got the lock.
        assert sum("schema created at" in log for log in logs) == 1, logs
        assert sum("schema is current" in log for log in logs) == 1, logs
        for _proc, port in procs:
            r = requests.post(
                f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search", json={"max_results": 5}, timeout=30
            )
            assert r.status_code == 200 and r.json()["experiments"][0]["name"] == "Default"

        # SIGTERM: the whole tree (supervisor, uvicorn) goes, exit code 0.
        proc, port = procs[0]
        tree = process_tree(proc.pid)
        assert len(tree) >= 2, tree  # supervisor -> uvicorn (one worker: no uvicorn parent)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(tree), f"left behind: {alive(tree)}"
        assert "received SIGTERM; stopping mlflow server" in logs[0] or "received SIGTERM" in (
            tmp_path / "server0.log"
        ).read_text()
    finally:
        for proc, _port in procs:
            local_mod.stop_group(proc)


def test_workers_serve_only_after_the_schema_step(new_database, tmp_path):
    """The schema is created beside the workers' start (server/launch.py); creating it on an empty
    database takes longer than a worker's import, so /health must wait for it."""
    from datetime import datetime

    proc, port = launch_server({"DB_URI": new_database(), "ARTIFACT_ROOT": str(tmp_path / "a")}, tmp_path / "s.log")
    try:
        first_ok = None
        deadline = time.monotonic() + local_mod.HEALTH_TIMEOUT
        while first_ok is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    first_ok = time.time()
            except requests.RequestException:
                time.sleep(0.01)
        log = (tmp_path / "s.log").read_text()
        assert first_ok is not None, log[-3000:]
        line = next(line for line in log.splitlines() if "schema created at" in line)
        created = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        assert first_ok >= created, (first_ok, line)
        r = requests.post(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search", json={"max_results": 1}, timeout=30)
        assert r.status_code == 200
    finally:
        local_mod.stop_group(proc)


def test_sigterm_while_waiting_for_the_database_stops_cleanly(tmp_path):
    port = local_mod.free_port()
    env = {**GOOD, "DB_PORT": str(port), "DB_WAIT_SECONDS": "60", "LOG_FORMAT": "text"}
    log_path = tmp_path / "wait.log"
    proc, _ = launch_server(env, log_path)
    try:
        deadline = time.monotonic() + 60
        while "database not reachable yet" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        local_mod.stop_group(proc)
    lines = log_path.read_text().splitlines()
    assert lines[-1] == "stopped before the server started (serve)"
    assert PASSWORD not in log_path.read_text()


def test_direct_artifact_mode_hands_clients_the_store_itself(start_server, tmp_path, monkeypatch):
    import mlflow

    root = tmp_path / "direct-artifacts"
    server = start_server(
        {"DB_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "ARTIFACT_ROOT": str(root), "ARTIFACT_MODE": "direct"}
    )
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH", raising=False)
    mlflow.set_tracking_uri(server.url)
    note = tmp_path / "note.txt"
    note.write_text("direct")
    mlflow.set_experiment("direct-mode")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(note))
    # No proxying: the run's artifact URI is the store, and the client wrote there itself.
    assert run.info.artifact_uri.startswith(str(root)) and "mlflow-artifacts" not in run.info.artifact_uri
    assert (Path(run.info.artifact_uri) / "note.txt").read_text() == "direct"
    server.stop()
