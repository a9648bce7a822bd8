"""Start stock `mlflow server` or our entrypoint on a fresh PostgreSQL database, and measure them.

Both get the same database server (127.0.0.1:5432), a local artifact directory served through the
tracking server (proxied), 127.0.0.1 and a free port. Stock runs with its defaults (uvicorn, 4
workers, job execution as shipped); only telemetry is off for both, since this machine has no
network for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from mlflow_gcp.server import local, permissions
from tests.conftest import process_tree, tree_rss_mb

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
# Variables that would change either server's behaviour if inherited from the caller's shell.
_SCRUB = ("MLFLOW_", "DB_", "ARTIFACT_", "WORKERS", "PORT", "HOST", "ALLOWED_HOSTS", "LOG_FORMAT")


def _admin():
    conn = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    conn.autocommit = True
    return conn


def _admin_sql(statement: str) -> None:
    conn = _admin()
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def create_database(prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def analyze(name: str) -> None:
    """VACUUM and ANALYZE every table of `name`, as autovacuum does to a freshly loaded table
    within a minute on Cloud SQL (where it is on; since PostgreSQL 13 inserts alone trigger it:
    autovacuum_vacuum_insert_threshold). This machine's PostgreSQL runs with autovacuum off, so
    without this a table the bench just loaded has no statistics and the planner guesses one row
    (search_runs' filtered shape then rescans latest_metrics once per run: 16.6 ms of database CPU
    per answer instead of 1.5-2.2), and no visibility map, so every index read also visits the
    heap (the chart request's step reads: 70 -> 57 ms of database CPU per request for ours).
    Both servers get the same step at the same points."""
    conn = psycopg2.connect(dbname=name, connect_timeout=3, **PG)
    conn.autocommit = True  # VACUUM refuses to run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("VACUUM (ANALYZE)")
    finally:
        conn.close()


def db_uri(name: str) -> str:
    return f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB) and k not in _SCRUB}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DO_NOT_TRACK"] = "true"
    return env


@dataclass
class Server:
    """One kind of server ("stock" or "ours") bound to its own database and artifact directory."""

    kind: str
    extra_env: dict[str, str] = field(default_factory=dict)
    database: str = ""
    artifacts: str = ""
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    ui_cache: str = ""

    def __post_init__(self):
        self.database = create_database(f"bench_{self.kind}")
        self.artifacts = tempfile.mkdtemp(prefix=f"bench-{self.kind}-")
        if self.kind == "ours":
            # What the image build does once (Dockerfile): the UI's files compressed ahead.
            self.ui_cache = tempfile.mkdtemp(prefix="bench-ui-gzip-")
            subprocess.run([sys.executable, "-m", "mlflow_gcp.server.uiassets", self.ui_cache],
                           check=True, stdout=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv_env(self) -> tuple[list[str], dict[str, str]]:
        env = base_env()
        if self.kind == "stock":
            argv = [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", db_uri(self.database),
                "--host", "127.0.0.1", "--port", str(self.port),
                "--artifacts-destination", self.artifacts,
            ]
        else:
            argv = [sys.executable, "-m", "mlflow_gcp.server"]
            env.update({
                "DB_URI": db_uri(self.database),
                "ARTIFACT_ROOT": self.artifacts,
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "LOG_FORMAT": "text",
                "MLFLOW_GCP_UI_CACHE": self.ui_cache,
            })
        env.update(self.extra_env)
        return argv, env

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait for /health 200; returns the seconds that took."""
        self.port = local.free_port()
        argv, env = self.argv_env()
        self.log_path = Path(self.artifacts).with_suffix(".log")
        log = open(self.log_path, "ab")
        began = time.perf_counter()
        self.proc = local.start_group(argv, env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_health(f"{self.url}/health", self.proc, timeout)
        except Exception:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.kind} server did not become healthy:\n{tail}") from None
        return time.perf_counter() - began

    def stop(self) -> None:
        if self.proc is not None:
            local.stop_group(self.proc, grace=15)
            self.proc = None

    def tree_rss_mib(self) -> float:
        return tree_rss_mib(self.proc.pid)

    def cpu_seconds(self) -> dict[int, float]:
        """CPU time (user + system) so far of each process of the server's tree and of each
        PostgreSQL backend connected to its database, by pid (negative pids: backends). Load on
        the machine disturbs this much less than wall time."""
        out = {pid: _cpu_seconds(pid) for pid in process_tree(self.proc.pid)}
        conn = _admin()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,))
                out.update({-pid: _cpu_seconds(pid) for (pid,) in cur.fetchall()})
        finally:
            conn.close()
        return out

    def cleanup(self) -> None:
        self.stop()
        drop_database(self.database)
        # Our server's schema step also creates the permission store's database beside it.
        drop_database(self.database + permissions.DB_SUFFIX)
        if self.kind == "ours":
            shutil.rmtree(self.ui_cache, ignore_errors=True)


def wait_health(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Poll every 50 ms (cold start is measured with it) until `url` answers 200."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"not healthy after {timeout:.0f} s")


def tree_rss_mib(pid: int) -> float:
    """Sum of VmRSS over `pid` and all its descendants (what a container's memory limit sees,
    give or take shared pages)."""
    return tree_rss_mb(process_tree(pid))


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """(server tree, database backends) CPU seconds between two `cpu_seconds()` samples; a
    process started in between counts from zero."""
    spent = {pid: t - before.get(pid, 0.0) for pid, t in after.items()}
    return sum(t for pid, t in spent.items() if pid > 0), sum(t for pid, t in spent.items() if pid < 0)


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
