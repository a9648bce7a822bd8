"""The real local stack the reliability scenarios break on purpose.

- `PrivatePostgres`: a PostgreSQL 15 cluster of our own (initdb in a tmp dir, a free port,
  max_connections of a small Cloud SQL tier) that we may stop, restart or starve without
  disturbing the shared server on 5432. Run as the `postgres` system user when we are root
  (initdb refuses root). The server connects as `mlflow`, a non-superuser with a password, as on
  Cloud SQL: superuser_reserved_connections then bites exactly as it would there.
- `ServerProcess`: our entrypoint (`python -m mlflow_gcp.server`) on a fixed port, which can be
  killed (the whole process tree, as when a Cloud Run instance dies) and started again.
- `Emulator`: the GCS emulator with its files on disk, so it can be stopped and started again on
  the same port with the objects it held.
- `Front`: the Cloud Run front stand-in, answering 503 when the instance behind it is gone (as
  Cloud Run does) instead of dropping the connection.
"""

from __future__ import annotations

import http.client
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from mlflow_gcp.server import local as local_mod

from tests.conftest import launch_server, process_tree
from tests.support.cloudrun_front import CloudRunFront, Seen

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SMALL_TIER_CONNECTIONS = 25  # db-f1-micro
DB_USER = "mlflow"


class StackError(RuntimeError):
    pass


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class PrivatePostgres:
    def __init__(self, max_connections: int = SMALL_TIER_CONNECTIONS):
        if not (PG_BIN / "initdb").exists():
            raise StackError(f"PostgreSQL 15 binaries not found in {PG_BIN}")
        self.max_connections = max_connections
        self.port = local_mod.free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mlflow-gcp-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.password = "pw-" + uuid.uuid4().hex  # what Secret Manager would hand the server
        self.database = "mlflow"

    def _run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(_as_postgres(argv), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise StackError(f"{' '.join(argv[:2])} failed: {proc.stderr.strip()[-800:]}")
        return proc

    def init(self) -> PrivatePostgres:
        reap_orphans()
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                   "--no-sync", "-E", "UTF8"], timeout=120)
        conf = (
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.dir}'\nmax_connections = {self.max_connections}\n"
            # Committed rows survive a PostgreSQL restart or crash without fsync (the OS keeps
            # them); nothing here simulates losing the machine.
            "fsync = off\nsynchronous_commit = on\nfull_page_writes = off\n"
            "shared_buffers = 16MB\nlog_min_messages = warning\n"
        )
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(conf)
        # The superuser (our checks) by trust, the server's user by password, as on Cloud SQL.
        hba = (
            "local all postgres trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        (self.data / "pg_hba.conf").write_text(hba)
        self.start()
        self.sql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{self.password}'")
        self.sql(f"CREATE DATABASE {self.database} OWNER {DB_USER}")
        return self

    def start(self) -> None:
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def restart(self, mode: str = "fast") -> None:
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "restart",
                   "-l", str(self.log)])

    def running(self) -> bool:
        return subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]),
                              capture_output=True).returncode == 0

    def connect(self, dbname: str | None = None):
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname=dbname or self.database, connect_timeout=3)
        conn.autocommit = True
        return conn

    def sql(self, statement: str, params=None, dbname: str = "postgres") -> list[tuple]:
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def query(self, statement: str, params=None) -> list[tuple]:
        return self.sql(statement, params, dbname=self.database)

    def new_database(self) -> str:
        name = f"mlflow_{uuid.uuid4().hex[:10]}"
        self.sql(f"CREATE DATABASE {name} OWNER {DB_USER}")
        return name

    def server_env(self, database: str | None = None) -> dict[str, str]:
        """The variables Cloud Run would set: parts, with the password from 'Secret Manager'."""
        return {
            "DB_USER": DB_USER, "DB_PASSWORD": self.password, "DB_NAME": database or self.database,
            "DB_HOST": "127.0.0.1", "DB_PORT": str(self.port),
        }

    def client_connections(self) -> int:
        """Client backends of the whole cluster, ours (this query) excluded."""
        rows = self.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                        "AND pid <> pg_backend_pid()")
        return int(rows[0][0])

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def reap_orphans() -> None:
    """Stop and delete private clusters whose owning process died without cleaning up (a test run
    killed by a timeout); clusters of live sessions are left alone."""
    for owner in Path(tempfile.gettempdir()).glob("mlflow-gcp-pg-*/owner.pid"):
        try:
            os.kill(int(owner.read_text()), 0)
            continue
        except (ProcessLookupError, ValueError):
            pass
        except PermissionError:
            continue
        data = owner.parent / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(owner.parent, ignore_errors=True)


class ServerProcess:
    """Our entrypoint on a fixed port; `kill()` is an instance dying, `start()` a new one."""

    def __init__(self, env: dict[str, str], log_dir: Path, port: int | None = None):
        self.env = env
        self.port = port or local_mod.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.logs: list[Path] = []
        self.proc: subprocess.Popen | None = None

    def launch(self) -> None:
        path = self.log_dir / f"server-{self.port}-{len(self.logs)}.log"
        self.logs.append(path)
        self.proc, _ = launch_server(self.env, path, port=self.port)

    def wait_healthy(self, timeout: float = 180) -> float:
        """Seconds until /health answers 200."""
        started = time.monotonic()
        try:
            local_mod.wait_http(f"{self.url}/health", self.proc, timeout, "the server")
        except local_mod.LocalError as err:
            raise StackError(f"{err}\n--- server output ---\n{self.output()[-3000:]}") from None
        return time.monotonic() - started

    def start(self, timeout: float = 180) -> float:
        self.launch()
        return self.wait_healthy(timeout)

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def kill(self) -> None:
        """SIGKILL every process of the instance (the supervisor runs MLflow in its own group)."""
        if self.proc is None:
            return
        for pid in process_tree(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            tree = process_tree(self.proc.pid)
            local_mod.stop_group(self.proc, grace=10)
            for pid in tree:  # anything the group stop missed
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class Emulator:
    """gcp-storage-emulator with its objects on disk: stop() and start() keep them."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.port = local_mod.free_port()
        self.host = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Emulator:
        argv = local_mod.emulator_command(self.port, self.data_dir, None)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = local_mod.start_group(argv, {**os.environ}, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        local_mod.wait_http(f"{self.host}/storage/v1/b?project=local", self.proc, 30, "the GCS emulator")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            local_mod.stop_group(self.proc, grace=5)
            self.proc = None

    def new_bucket(self) -> str:
        name = f"mlflow-rel-{uuid.uuid4().hex[:10]}"
        local_mod.create_bucket(self.host, name)
        return name

    def blobs(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project="test", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": self.host})
        return {b.name: b.download_as_bytes() for b in client.list_blobs(bucket, prefix=prefix)}


class _LoseAnswer(Exception):
    pass


class Front(CloudRunFront):
    """The Cloud Run front, answering 503 when the instance behind it cannot be reached.

    `lose_answers[path_suffix] = n`: the next n requests whose path ends so reach the server, but
    their answers are dropped (the connection closes): a write done whose acknowledgement is lost.
    """

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.lose_answers: dict[str, int] = {}

    def _take_loss(self, path: str) -> bool:
        with self._lock:
            for suffix, left in self.lose_answers.items():
                if left > 0 and path.endswith(suffix):
                    self.lose_answers[suffix] = left - 1
                    return True
        return False

    class handler_class(CloudRunFront.handler_class):
        def _relay(self, resp):
            super()._relay(resp)
            if resp.length:  # the instance died mid-answer: cut the client off, as Cloud Run does,
                self.close_connection = True  # instead of leaving it waiting for the rest

        def _forward(self, front, length, chunked, record, checked):
            answered: list[int] = []
            path = self.path.split("?", 1)[0]

            def note(status: int) -> None:
                answered.append(status)
                record(status)
                if front._take_loss(path):
                    raise _LoseAnswer()

            try:
                super()._forward(front, length, chunked, note, checked)
            except _LoseAnswer:
                self.close_connection = True
            except (OSError, http.client.HTTPException) as err:
                if answered:  # the answer was under way: all we can do is drop the connection
                    self.close_connection = True
                    return
                front._record(Seen(self.command, path, 503, None, f"upstream: {type(err).__name__}"))
                self.close_connection = True
                try:
                    self.send_body(503, b"Service Unavailable", "text/plain", {"Connection": "close"})
                except OSError:
                    pass  # the client gave up waiting: nobody to tell
