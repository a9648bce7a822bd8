"""Local mode: the container's entrypoint on this machine, plus an optional GCS emulator.

`local_env` is pure (options -> the entrypoint's environment). `LocalStack` starts what the
options ask for (a GCS emulator, then `python -m mlflow_gcp.server`), each in its own process
group, and `stop()` ends them all: the entrypoint forwards SIGTERM to the `mlflow server` group it
supervises, so nothing is left behind. The tests reuse these helpers to start real servers.
The emulator is gcp-storage-emulator with its download, compose and resumable paths done on files
(server/gcs_emulator.py), so multi-GiB artifacts need neither several times their size in RAM
nor a full read per ranged GET.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlflow_gcp.errors import MlflowGcpError
from mlflow_gcp.server.env import PASSPHRASE_ENV, loopback_hosts, normalize_db_uri

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_DATA_DIR = "mlflow-data"
EMULATOR_BUCKET = "mlflow-local"
DEFAULT_LOCAL_ADMIN = "admin@localhost"
EMULATOR_HINT = "pip install gcp-storage-emulator"
# MLflow imports for several seconds and migrates an empty database on first start; 2 shared
# cores under load have needed close to a minute.
HEALTH_TIMEOUT = 120.0


class LocalError(MlflowGcpError):
    """Local mode could not start what it was asked to."""


@dataclass(frozen=True)
class LocalOptions:
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    backend_store_uri: str | None = None
    artifacts_destination: str | None = None
    gcs_emulator: bool = False
    workers: int = 1
    # MLflow permissions with identities from the dev header (or a local identity stand-in).
    permissions: bool = False
    admins: tuple[str, ...] = ()
    # Upgrade an existing older schema (one-way); without it such a database is refused.
    upgrade_db: bool = False
    # Host headers accepted besides the loopback names (--allowed-hosts / ALLOWED_HOSTS).
    allowed_hosts: tuple[str, ...] = ()
    gateway: bool = False  # MLflow's AI gateway (--gateway)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def local_env(opts: LocalOptions, emulator_host: str | None = None) -> dict[str, str]:
    """The entrypoint's variables for local mode (pure)."""
    data_dir = opts.data_dir.expanduser().resolve()
    db_uri = opts.backend_store_uri or f"sqlite:///{data_dir / 'mlflow.db'}"
    artifacts = opts.artifacts_destination
    if artifacts is None:
        artifacts = f"gs://{EMULATOR_BUCKET}" if opts.gcs_emulator else str(data_dir / "artifacts")
    elif not artifacts.startswith("gs://") and "://" not in artifacts:
        artifacts = str(Path(artifacts).expanduser().resolve())
    env = {
        "DB_URI": normalize_db_uri(db_uri),
        "ARTIFACT_ROOT": artifacts,
        "HOST": opts.host,
        "PORT": str(opts.port),
        "WORKERS": str(opts.workers),
        "DB_MIGRATE": "upgrade" if opts.upgrade_db else "auto",
        "LOG_FORMAT": "text",
        # Loopback names only unless widened: MLflow's default list matches rebinding DNS names.
        "ALLOWED_HOSTS": ",".join(dict.fromkeys([*opts.allowed_hosts, *loopback_hosts(opts.port)])),
        "GATEWAY": "on" if opts.gateway else "off",
    }
    if emulator_host:
        env["STORAGE_EMULATOR_HOST"] = emulator_host
    if opts.permissions:
        admins = list(opts.admins) or [DEFAULT_LOCAL_ADMIN]
        env.update({
            "MLFLOW_GCP_PERMISSIONS": "1",
            "MLFLOW_GCP_ADMINS": ",".join(admins),
            # Clients name themselves with X-Mlflow-Gcp-Dev-User (MLFLOW_GCP_DEV_USER for the
            # plugin); a browser, which cannot, is the first admin.
            "IDENTITY_DEV_HEADER": "1",
            "IDENTITY_DEV_USER": admins[0],
        })
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As uvicorn binds: a port whose last connections sit in TIME_WAIT (a server just
        # stopped) is free to listen on; only a listening socket makes it taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def start_group(argv: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
    """Start `argv` as the leader of a new process group (so one signal reaches all of it)."""
    from mlflow_gcp.server.launch import die_with_parent

    return subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent, **popen
    )


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> int | None:
    """SIGTERM the group led by `proc`, wait `grace` s, then SIGKILL whatever is left of it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    """Poll `url` until it answers 200; LocalError when `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LocalError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise LocalError(f"{what} was not ready at {url} after {timeout:.0f} s")


def emulator_command(port: int, data_dir: Path | None, bucket: str | None) -> list[str]:
    """gcp-storage-emulator with our bounded-memory paths (server/gcs_emulator.py) (pure)."""
    argv = [sys.executable, "-m", "mlflow_gcp.server.gcs_emulator", "--host", "127.0.0.1", "--port", str(port),
            "--quiet"]
    argv += ["--data-dir", str(data_dir)] if data_dir is not None else ["--in-memory"]
    if bucket:
        argv += ["--default-bucket", bucket]
    return argv


def check_emulator(bounded: bool = True) -> None:
    """LocalError, in one line, when gcp-storage-emulator is missing or (for the on-disk, `bounded`
    emulator) not the shape its paths patch."""
    import importlib.util

    if importlib.util.find_spec("gcp_storage_emulator") is None:
        raise LocalError("the GCS emulator is not installed", hint=EMULATOR_HINT)
    if not bounded:
        return
    from mlflow_gcp.server import gcs_emulator

    problems = gcs_emulator.check_shape()
    if problems:
        raise LocalError(
            f"the installed gcp-storage-emulator ({gcs_emulator.installed_version()}) is not the shape "
            f"local mode's bounded emulator patches: {'; '.join(problems)}",
            hint=f"pip install gcp-storage-emulator=={gcs_emulator.PINNED}",
        )


def start_emulator(data_dir: Path | None, bucket: str | None, **popen) -> tuple[subprocess.Popen, str]:
    """The GCS emulator on a free port: its files in `data_dir` with bounded memory, or in memory."""
    check_emulator(bounded=data_dir is not None)
    port = free_port()
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
    proc = start_group(emulator_command(port, data_dir, bucket), {**os.environ}, **popen)
    host = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{host}/storage/v1/b?project=local", proc, 30, "the GCS emulator")
    except LocalError:
        stop_group(proc)
        raise
    return proc, host


def create_bucket(emulator_host: str, name: str) -> None:
    """Create bucket `name` in the emulator (a 409 for an existing one is fine)."""
    import json

    req = urllib.request.Request(
        f"{emulator_host}/storage/v1/b?project=local",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        urllib.request.urlopen(req, timeout=10).close()
    except urllib.error.HTTPError as err:
        if err.code != 409:
            raise LocalError(f"could not create bucket {name} in the emulator: HTTP {err.code}") from err


GATEWAY_PASSPHRASE_FILE = "gateway-passphrase"


def gateway_passphrase(path: Path) -> str:
    """The passphrase encrypting the gateway's stored keys in local mode: made once, readable by
    this user only, and passed by environment (never argv, never printed). The same file must
    come back next time: keys encrypted with another passphrase cannot be read."""
    import secrets

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


class LocalStack:
    """What `mlflow-gcp local` runs; `start()` then `wait()`, and `stop()` in a finally."""

    def __init__(self, opts: LocalOptions, base_env: dict[str, str] | None = None, **popen):
        self.opts = opts
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.popen = popen
        self.emulator: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    def start(self, timeout: float = HEALTH_TIMEOUT) -> str:
        opts = self.opts
        if not port_is_free(opts.host if opts.host != "::" else "0.0.0.0", opts.port):
            raise LocalError(f"port {opts.port} on {opts.host} is in use", hint="pass --port")
        emulator_host = self.base_env.get("STORAGE_EMULATOR_HOST")
        if opts.gcs_emulator:
            bucket = None
            dest = opts.artifacts_destination or f"gs://{EMULATOR_BUCKET}"
            if dest.startswith("gs://"):
                bucket = dest[len("gs://") :].split("/", 1)[0]
            data = opts.data_dir.expanduser().resolve() / "gcs"
            self.emulator, emulator_host = start_emulator(data, None, **self.popen)
            if bucket:
                create_bucket(emulator_host, bucket)
        self.env = {**self.base_env, **local_env(opts, emulator_host)}
        if not opts.backend_store_uri or opts.gateway:
            opts.data_dir.expanduser().mkdir(parents=True, exist_ok=True)
        if opts.gateway and not self.env.get(PASSPHRASE_ENV):
            self.env[PASSPHRASE_ENV] = gateway_passphrase(opts.data_dir.expanduser() / GATEWAY_PASSPHRASE_FILE)
        self.server = start_group([sys.executable, "-m", "mlflow_gcp.server"], self.env, **self.popen)
        wait_http(f"{opts.url}/health", self.server, timeout, "the MLflow server")
        return opts.url

    def wait(self) -> int:
        """Block until the server exits; SIGINT/SIGTERM stop everything and return 0."""
        stop: list[int] = []

        def on_signal(signum, _frame):
            stop.append(signum)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop:
                if self.server is None or self.server.poll() is not None:
                    return self.server.returncode if self.server else 1
                if self.emulator is not None and self.emulator.poll() is not None:
                    raise LocalError("the GCS emulator stopped unexpectedly")
                time.sleep(0.2)
            return 0
        finally:
            for signum, handler in old.items():
                signal.signal(signum, handler)

    def stop(self) -> None:
        if self.server is not None:
            stop_group(self.server)
        if self.emulator is not None:
            stop_group(self.emulator, grace=5)
