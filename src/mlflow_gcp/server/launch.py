"""Build the server command (uvicorn with MLflow's app, as `mlflow server` runs it) and supervise it.

`build_command(settings)` returns the argv and the environment additions; nothing starts. The
supervisor (`run`) starts that command in its own process group, turns its output into our log
lines (JSON for Cloud Logging, passwords redacted), forwards SIGTERM/SIGINT to the whole group
and kills what is left after a grace period, so no uvicorn worker outlives the container's main
process.

`python -m mlflow_gcp.server.launch` is what the entrypoint execs into once the environment is
valid: a fresh interpreter that never imports MLflow, so the supervisor stays a few MB. It starts
the workers and `python -m mlflow_gcp.server prepare` (database wait, schema) at the same time:
a worker spends ~2 s importing MLflow, during which the schema step (0.2 s when current, longer
for a migration) is done. Workers wait in `create_app` until the supervisor marks the schema
ready (server/app.py); if the step fails, the workers are killed and its exit code (3 database,
4 schema, ...) is the server's, its message the last line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from mlflow_gcp.budget import Pool
from mlflow_gcp.server import accept_balance, logs, permissions
from mlflow_gcp.server.app import CONCURRENCY_ENV, CONNECTIONS_PER_REQUEST, SCHEMA_READY_ENV
from mlflow_gcp.server.env import LOCAL_HOSTS, Settings, redact, settings_from_env
from mlflow_gcp.server.pool import with_pool
from mlflow_gcp.server.store import BULK_ENV as BULK_STORE_ENV

APP_NAME = "mlflow-gcp"  # the `mlflow.app` entry point in pyproject.toml (`mlflow server --app-name`)

# Cloud Run sends SIGTERM and SIGKILLs 10 s later; leave uvicorn most of that to finish requests.
GRACE_SECONDS = 8.0

# Settings we always give `mlflow server`, and why.
FIXED_ENV = {
    # The job runner and its 7 huey consumers cost ~1.8 GB RSS and this server runs no jobs.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # No usage telemetry from a private company server.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    # Log lines leave the process at once (Cloud Logging, tests reading the output).
    "PYTHONUNBUFFERED": "1",
    # Library deprecation notices are not operator information; keep them out of the logs.
    # (MLflow 3.17 itself triggers Starlette's WSGI notice, a UserWarning, in every worker.)
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore:starlette.middleware.wsgi is deprecated",
}


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if its parent dies, even by SIGKILL (Linux), so a killed
    supervisor or `mlflow-gcp local` does not leave a server running in its own session."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def backend_store_uri(settings: Settings) -> str:
    """The URI `mlflow server` gets: the budgeted pool rides along for the engine plugin."""
    if settings.pool is None:
        return settings.db_uri
    return with_pool(settings.db_uri, settings.pool.pool_size, settings.pool.max_overflow)


def allowed_hosts(settings: Settings) -> list[str]:
    """The --allowed-hosts list; empty means MLflow's default (localhost and private IPs)."""
    if not settings.allowed_hosts:
        return []
    if "*" in settings.allowed_hosts:
        return ["*"]
    # MLflow replaces its localhost defaults with the list, so keep local checks working.
    return list(dict.fromkeys([*settings.allowed_hosts, *LOCAL_HOSTS]))


def cors_origins(settings: Settings) -> list[str]:
    """The UI's own origins: browsers send Origin on same-origin POSTs too, and MLflow blocks
    state-changing API requests from any non-localhost origin it was not told about, so without
    these the UI served at https://<service>.run.app cannot search runs (403)."""
    return [
        f"{scheme}://{host}"
        for host in settings.allowed_hosts
        if host != "*"
        for scheme in ("https", "http")
    ]


# MLflow's default artifact root when it proxies artifacts (mlflow.utils.server_cli_utils).
PROXIED_ARTIFACT_ROOT = "mlflow-artifacts:/"
HTTP_PROTOCOL = "mlflow_gcp.server.uvicorn_http:NoDelayHTTPProtocol"
APP_FACTORY = "mlflow_gcp.server.app:create_app"
GATEWAY_ENV = "MLFLOW_ENABLE_AI_GATEWAY"  # MLflow's switch, also read by server/guard.py


def uvicorn_log_config() -> str:
    """MLflow's uvicorn log config file, found without importing MLflow (that takes seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mlflow is not installed")
    return os.path.join(next(iter(spec.submodule_search_locations)), "server", "uvicorn_log_config.yaml")


def mlflow_server_env(settings: Settings) -> dict[str, str]:
    """What `mlflow server` (mlflow/cli/__init__.py `server` and mlflow/server/__init__.py
    `_run_server`, MLflow 3.17) puts into its uvicorn workers' environment for our options.

    tests/unit/test_server_tuning.py runs MLflow's own code for the same options and compares,
    so an MLflow upgrade that changes this contract fails a test instead of a deployment."""
    uri = backend_store_uri(settings)
    env = {
        "_MLFLOW_SERVER_FILE_STORE": uri,
        "_MLFLOW_SERVER_REGISTRY_STORE": uri,
        # A fresh id per boot shared by all workers (MLflow uses it to tell its own sandbox
        # containers from orphans; we run none, but keep the contract).
        "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex,
        "_MLFLOW_IN_JOB_EXECUTOR": "false",
        "_MLFLOW_SGI_NAME": "uvicorn",
        "MLFLOW_ENABLE_WORKSPACES": "false",
        # The CLI's defaults for --x-frame-options, --secrets-cache-ttl, --secrets-cache-max-size.
        "MLFLOW_SERVER_X_FRAME_OPTIONS": "SAMEORIGIN",
        "MLFLOW_SERVER_SECRETS_CACHE_TTL": "60",
        "MLFLOW_SERVER_SECRETS_CACHE_MAX_SIZE": "1000",
    }
    if settings.artifact_mode == "proxied":
        env["_MLFLOW_SERVER_ARTIFACT_ROOT"] = PROXIED_ARTIFACT_ROOT
        env["_MLFLOW_SERVER_SERVE_ARTIFACTS"] = "true"
        env["_MLFLOW_SERVER_ARTIFACT_DESTINATION"] = settings.artifact_root
    else:
        env["_MLFLOW_SERVER_ARTIFACT_ROOT"] = settings.artifact_root
        # `mlflow server` always passes its --artifacts-destination default along.
        env["_MLFLOW_SERVER_ARTIFACT_DESTINATION"] = "./mlartifacts"
    hosts = allowed_hosts(settings)
    if hosts:
        env["MLFLOW_SERVER_ALLOWED_HOSTS"] = ",".join(hosts)
    origins = cors_origins(settings)
    if origins:
        env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] = ",".join(origins)
    return env


def mlflow_server_args(settings: Settings) -> list[str]:
    """The `mlflow server` options equivalent to what we run (the contract test replays them
    through MLflow's own CLI; also handy to run stock MLflow the same way by hand)."""
    args = ["--backend-store-uri", backend_store_uri(settings), "--host", settings.host,
            "--port", str(settings.port), "--workers", str(settings.workers)]
    if settings.artifact_mode == "proxied":
        args += ["--serve-artifacts", "--artifacts-destination", settings.artifact_root]
    else:
        args += ["--no-serve-artifacts", "--default-artifact-root", settings.artifact_root]
    hosts = allowed_hosts(settings)
    if hosts:
        args += ["--allowed-hosts", ",".join(hosts)]
    origins = cors_origins(settings)
    if origins:
        args += ["--cors-allowed-origins", ",".join(origins)]
    return args


def build_command(settings: Settings, python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment for the uvicorn server (pure apart from a boot id).

    We start uvicorn with MLflow's app ourselves, exactly as `mlflow server` would, instead of
    running `mlflow server`: that launcher process imports all of MLflow (~4 s) and then only
    waits, holding ~245 MB for the life of the container."""
    argv = [
        python,
        "-m",
        "uvicorn",
        "--log-config",
        uvicorn_log_config(),
        # Cloud Run logs every request itself; a second access line per request costs CPU.
        "--no-access-log",
        "--http",
        HTTP_PROTOCOL,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
        "--factory",
        APP_FACTORY,
    ]
    env = {**FIXED_ENV, **mlflow_server_env(settings)}
    if settings.workers > 1:
        env[accept_balance.ENV] = "1"  # connections spread evenly over the workers
    if settings.db_kind == "postgresql":
        env[BULK_STORE_ENV] = "1"  # our bulk metric store (server/store.py)
    # MLflow turns its AI gateway on unless told otherwise; ours is off unless GATEWAY says on.
    env[GATEWAY_ENV] = "true" if settings.gateway else "false"
    if settings.pool is not None:
        # MLflow's app, with no more DB requests at once than the pool can serve (server/app.py).
        env[CONCURRENCY_ENV] = str(db_concurrency(settings.pool))
    return argv, env


def db_concurrency(pool: Pool) -> int:
    """Database requests one worker runs at once so that none waits on a connection forever."""
    return max(1, pool.per_engine // CONNECTIONS_PER_REQUEST)


def describe(argv: list[str]) -> str:
    """The command as one loggable line (passwords redacted)."""
    return redact(" ".join(argv))


_SEVERITY_RE = re.compile(r"\b(CRITICAL|ERROR|WARNING|WARN|INFO|DEBUG)\b")


def _severity(line: str, previous: str) -> str:
    match = _SEVERITY_RE.search(line[:120])
    if match:
        return "WARNING" if match.group(1) == "WARN" else match.group(1)
    if line.startswith(("Traceback", " ", "\t")) and previous == "ERROR":
        return "ERROR"
    if line.startswith("Traceback"):
        return "ERROR"
    return "INFO"


def _pump(stream, out, log_format: str) -> None:
    """Copy the child's lines to `out`, redacted, wrapped in JSON unless they already are."""
    previous = "INFO"
    for raw in iter(stream.readline, b""):
        line = redact(raw.decode("utf-8", "replace").rstrip("\n"))
        if log_format == "json" and not line.startswith("{"):
            previous = _severity(line, previous)
            line = json.dumps({"severity": previous, "message": line}, ensure_ascii=False)
        try:
            out.write(line + "\n")
            out.flush()
        except (BrokenPipeError, ValueError):
            pass


class Preparation:
    """`python -m mlflow_gcp.server prepare` in a child; its log lines are relayed as they come,
    except the last, which `finish` prints: on failure, after the workers are gone, so the
    reason is the last line an operator (or Cloud Run's log view) sees."""

    def __init__(self, ready_path: str):
        self.ready_path = ready_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow_gcp.server", "prepare"],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        self.last: bytes | None = None
        self.relay = threading.Thread(target=self._relay, daemon=True)
        self.relay.start()
        self.code: int | None = None

    def _relay(self) -> None:
        for line in self.proc.stderr:
            if self.last is not None:
                _write_raw(self.last)
            self.last = line

    def poll(self) -> int | None:
        """None while it runs; its exit code once done (the schema is marked ready on 0)."""
        if self.code is None:
            self.code = self.proc.poll()
            if self.code == 0:
                self.finish()
                open(self.ready_path, "x").close()
        return self.code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # it unwinds and says it was stopped

    def finish(self) -> None:
        self.proc.wait()
        self.relay.join(timeout=5)
        if self.last is not None:
            _write_raw(self.last)
            self.last = None


def _write_raw(line: bytes) -> None:
    try:
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass


class Supervisor:
    """One `mlflow server` process group, its log pumps and its shutdown."""

    def __init__(self, argv: list[str], env: dict[str, str], log_format: str):
        self.log = logs.get()
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: one signal reaches every worker
            preexec_fn=die_with_parent,
        )
        self.pumps = [
            threading.Thread(target=_pump, args=(self.proc.stdout, sys.stdout, log_format), daemon=True),
            threading.Thread(target=_pump, args=(self.proc.stderr, sys.stderr, log_format), daemon=True),
        ]
        for pump in self.pumps:
            pump.start()
        self.stopping = False

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, signum: int = signal.SIGTERM, grace: float = GRACE_SECONDS) -> int:
        """Forward `signum` to the group, wait `grace` seconds, then SIGKILL what is left."""
        self.stopping = True
        self.signal_group(signum)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.log.warning("mlflow server did not stop within %.0f s; killing it", grace)
            self.signal_group(signal.SIGKILL)
            return self.proc.wait()
        finally:
            # uvicorn workers may linger a moment after their parent; never leave one behind.
            self._reap_group()

    def _reap_group(self) -> None:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            self.signal_group(signal.SIGKILL)
        for pump in self.pumps:
            pump.join(timeout=1.0)

    def wait(self, preparation: Preparation | None = None) -> int:
        """Block until the server exits on its own, a forwarded signal stops it, or
        `preparation` fails (its exit code is then the server's)."""
        received: list[int] = []

        def on_signal(signum, _frame):
            received.append(signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)
        preparing = preparation is not None
        while True:
            if received:
                signum = received[0]
                if preparing:
                    preparation.stop()
                    self.stop(signal.SIGKILL, grace=5)  # not serving yet: nothing to drain
                    preparation.finish()
                    return 0
                self.log.info("received %s; stopping mlflow server", signal.Signals(signum).name)
                self.stop(signum)
                # A requested stop is a clean exit, whatever the children died of.
                return 0
            if preparing:
                prepared = preparation.poll()
                if prepared is not None and prepared != 0:
                    self.stop(signal.SIGKILL, grace=5)
                    preparation.finish()
                    return prepared
                preparing = prepared is None
            code = self.proc.poll()
            if code is not None:
                self._reap_group()
                if preparing:
                    preparation.stop()
                    preparation.finish()
                return code
            time.sleep(0.05 if preparing else 0.2)


def run(settings: Settings) -> int:
    """Start `mlflow server` for `settings` and supervise it until it exits or is told to stop."""
    argv, env = build_command(settings)
    log = logs.get()
    if not settings.allowed_hosts and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "ALLOWED_HOSTS is not set: API requests whose Host is not localhost or a private IP "
            "get 403 'Invalid Host header' (set it to the service's host, e.g. *.run.app)"
        )
    # Not in TMPDIR, which belongs to MLflow's artifact spooling (tests check it ends empty).
    ready_dir = tempfile.mkdtemp(prefix="mlflow-gcp-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    env[SCHEMA_READY_ENV] = os.path.join(ready_dir, "schema-ready")
    env.update(permissions.launch_env(settings.db_uri, pooled=settings.pool is not None))
    try:
        log.info("starting: %s", describe(argv))
        supervisor = Supervisor(argv, env, settings.log_format)
        preparation = Preparation(env[SCHEMA_READY_ENV])
        code = supervisor.wait(preparation)
        if code and not supervisor.stopping:
            log.error("mlflow server exited with code %s", code)
        return code
    finally:
        shutil.rmtree(ready_dir, ignore_errors=True)


def main() -> int:
    settings = settings_from_env(os.environ)
    logs.setup(settings.log_format)
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
