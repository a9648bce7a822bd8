"""Shared fixtures for real services: PostgreSQL, a GCS emulator, and our server.

PostgreSQL (127.0.0.1:5432, user postgres, trust auth):
- `postgres_admin_url`  session; the server's `postgres` database URL. Skips with a reason naming
  postgres when the server is unreachable, but fails instead when MLFLOW_GCP_REQUIRE_POSTGRES=1
  (CI sets it, so PostgreSQL-backed tests can never be skipped silently there).
- `new_database`        session; a factory: `new_database()` -> URL of a fresh, empty database
  named mlflow_gcp_test_<uuid>; every database it made is dropped at the end of the session.
- `postgres_url`        session; one fresh database for the whole run (from `new_database`).
Tests using any of these get the `postgres` marker automatically.

GCS:
- `gcs_emulator`        session; a gcp-storage-emulator (in memory) on a free port. Sets
  STORAGE_EMULATOR_HOST for the session and returns a `GcsEmulator` (`.host`, `.create_bucket()`,
  `.new_bucket()` -> a fresh bucket name).

Our server:
- `start_server`        session; `start_server(env, ...)` runs `python -m mlflow_gcp.server` (the
  container's entrypoint) on a free port with `env` on top of a clean base, waits for /health and
  returns a `RunningServer` (`.url`, `.proc`, `.output()`, `.stop()`); whatever is still running
  at the end of the session is stopped (process groups, so no uvicorn worker survives).
  Starting MLflow costs seconds of CPU on 2 shared cores: prefer module- or session-scoped servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlflow_gcp.server import local as local_mod

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REQUIRE_POSTGRES_ENV = "MLFLOW_GCP_REQUIRE_POSTGRES"
POSTGRES_FIXTURES = {"postgres_admin_url", "postgres_url", "new_database"}

# Variables a test run may inherit that would change what the server or client does.
_SCRUBBED = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_TRACKING_TOKEN",
    "DB_URI",
    "DB_USER",
    "DB_PASSWORD",
    "DB_NAME",
    "DB_HOST",
    "DB_PORT",
    "INSTANCE_CONNECTION_NAME",
    "ARTIFACT_ROOT",
    "ARTIFACT_MODE",
    "ALLOWED_HOSTS",
    "PORT",
    "HOST",
    "WORKERS",
    "DB_CONNECTIONS",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
    "DB_MIGRATE",
    "DB_WAIT_SECONDS",
    "LOG_FORMAT",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without the variables that configure our server or an MLflow client."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored():
    """Undo a test's `mlflow.set_tracking_uri`: it sets a process-wide global and exports
    MLFLOW_TRACKING_URI, so every later test's fluent calls, and the gcp plugin's token scope
    (tokens go only to the tracking URI's origin), would keep pointing at that test's server."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")  # never import MLflow here
    before = utils._tracking_uri if utils else None
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None and utils._tracking_uri != before:
        utils.set_tracking_uri(before)
    if env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = env


# ---------------------------------------------------------------- PostgreSQL


def _pg_connect(dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=3)
    conn.autocommit = True
    return conn


def pg_admin(*statements: str) -> None:
    """Run statements (CREATE/DROP DATABASE, roles...) as the superuser, outside a transaction."""
    conn = _pg_connect()
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def pg_url(dbname: str) -> str:
    return f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    try:
        _pg_connect().close()
    except Exception as err:  # any driver error means: no usable server
        reason = f"postgres not reachable at {PG_HOST}:{PG_PORT}: {str(err).strip().splitlines()[0]}"
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_POSTGRES_ENV}=1)", pytrace=False)
        pytest.skip(reason)
    return pg_url("postgres")


@pytest.fixture(scope="session")
def new_database(postgres_admin_url):
    """Factory: a fresh empty database per call; all dropped when the session ends."""
    made: list[str] = []

    def make(prefix: str = "mlflow_gcp_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        pg_admin(f'CREATE DATABASE "{name}"')
        made.append(name)
        return pg_url(name)

    yield make
    pg_admin(*(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in made))


@pytest.fixture(scope="session")
def postgres_url(new_database) -> str:
    """One fresh database for the whole test run."""
    return new_database()


def pg_connections(dbname: str) -> list[tuple[int, str]]:
    """(backend pid, application_name) of every connection to `dbname` but our own."""
    conn = _pg_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid, application_name FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )
            return cur.fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------- GCS emulator


@dataclass
class GcsEmulator:
    host: str
    proc: subprocess.Popen

    def create_bucket(self, name: str) -> str:
        local_mod.create_bucket(self.host, name)
        return name

    def new_bucket(self, prefix: str = "mlflow-test") -> str:
        return self.create_bucket(f"{prefix}-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def gcs_emulator():
    proc, host = local_mod.start_emulator(None, None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    try:
        yield GcsEmulator(host, proc)
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        local_mod.stop_group(proc, grace=5)


# ---------------------------------------------------------------- our server


@dataclass
class RunningServer:
    url: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        return local_mod.stop_group(self.proc)


def launch_server(env: dict[str, str], log_path: Path, *, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """Start the entrypoint without waiting; returns (process, port)."""
    port = port or local_mod.free_port()
    # One worker unless a test asks for more: the default (one per CPU) is unit-tested, and CI's
    # two cores run many servers at once.
    full = clean_env(**{"HOST": "127.0.0.1", "LOG_FORMAT": "text", "WORKERS": "1", **env, "PORT": str(port)})
    log = open(log_path, "wb")
    proc = local_mod.start_group(
        [sys.executable, "-m", "mlflow_gcp.server"], full, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()  # the child keeps its own descriptor
    return proc, port


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """Factory: start our entrypoint with `env`, wait for /health, stop at session end."""
    running: list[RunningServer] = []

    def start(env: dict[str, str], *, timeout: float = local_mod.HEALTH_TIMEOUT) -> RunningServer:
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        proc, port = launch_server(env, log_path)
        server = RunningServer(f"http://127.0.0.1:{port}", port, proc, log_path, env)
        running.append(server)
        try:
            local_mod.wait_http(f"{server.url}/health", proc, timeout, "the server")
        except local_mod.LocalError as err:
            server.stop()
            pytest.fail(f"{err}\n--- server output ---\n{server.output()[-4000:]}", pytrace=False)
        return server

    yield start
    for server in running:
        server.stop()


# ---------------------------------------------------------------- processes


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (int(rest[1]), rest[0])
    return table


def process_tree(pid: int) -> set[int]:
    """`pid` and all its living descendants (to check later that none is left behind)."""
    table = _proc_table()
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _state) in table.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return {p for p in tree if p in table}


def alive(pids: set[int]) -> set[int]:
    """The pids of `pids` still running (zombies count as gone)."""
    table = _proc_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


def tree_rss_mb(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024
