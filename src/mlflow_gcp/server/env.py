"""The server container's environment, read and validated before anything connects.

`settings_from_env(env)` is pure: it turns the variables Cloud Run sets (see the table in
`VARIABLES`) into a frozen `Settings`, or raises `ServerEnvError` naming the first bad variable and
what it expects. No default ever stands in for the database or the artifact root: a container's
disk vanishes with the instance, so a missing one is an error.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from mlflow_gcp import budget
from mlflow_gcp.server import permissions
from mlflow_gcp.errors import ServerEnvError
from mlflow_gcp.redaction import redact  # noqa: F401  (the server's modules import it from here)

# name -> what it expects; the one table the error lines and the docs quote.
VARIABLES = {
    "DB_URI": "a SQLAlchemy URI such as postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB or sqlite:////abs/path/mlflow.db",
    "DB_USER": "the database user (used when DB_URI is not set)",
    "DB_PASSWORD": "the database password (Cloud Run injects it from Secret Manager)",
    "DB_NAME": "the database name",
    "INSTANCE_CONNECTION_NAME": "the Cloud SQL instance as project:region:instance",
    "DB_HOST": "the database host name or IP (when INSTANCE_CONNECTION_NAME is not set)",
    "DB_PORT": "a TCP port between 1 and 65535",
    "ARTIFACT_ROOT": "gs://bucket[/prefix] or an absolute local path",
    "ARTIFACT_MODE": "'proxied' or 'direct'",
    "PORT": "a TCP port between 1 and 65535",
    "HOST": "the address to bind, e.g. 0.0.0.0",
    "ALLOWED_HOSTS": "a comma-separated list of host names or patterns such as *.run.app",
    "WORKERS": "an integer between 1 and 16",
    "DB_CONNECTIONS": "a positive integer: the connections this instance may open",
    "DB_POOL_SIZE": "a positive integer",
    "DB_MAX_OVERFLOW": "an integer >= 0",
    "DB_MIGRATE": "'auto' (create an empty database's schema), 'upgrade' (also upgrade an older one) or 'never'",
    "DB_WAIT_SECONDS": "a number of seconds >= 0",
    "LOG_FORMAT": "'json' or 'text'",
    "GATEWAY": "'on' or 'off' (MLflow's AI gateway; off unless the deployment opts in)",
    "MLFLOW_CRYPTO_KEK_PASSPHRASE": "the passphrase that encrypts the AI gateway's secrets "
    "(Cloud Run injects it from Secret Manager); required when GATEWAY is on",
}
# MLflow's variable (mlflow/utils/crypto.py); without it MLflow encrypts with a passphrase every
# installation shares, written in its source.
PASSPHRASE_ENV = "MLFLOW_CRYPTO_KEK_PASSPHRASE"

DEFAULT_PORT = 8080
DEFAULT_WORKERS = 1
# With WORKERS unset: one worker per CPU the container may use, at most this many. Each worker
# is one Python process (~260 MiB, its own share of DB_CONNECTIONS); past a few, add instances.
MAX_DEFAULT_WORKERS = 4
# Cloud SQL starts or restarts in well under half a minute; waiting longer only delays the
# failure Cloud Run reports anyway.
DEFAULT_DB_WAIT_SECONDS = 30.0
# With no DB_CONNECTIONS, one instance alone on a db-f1-micro (25 minus the reserve).
DEFAULT_DB_CONNECTIONS = budget.SHARED_CORE_TIERS["db-f1-micro"] - budget.RESERVED_CONNECTIONS

_INSTANCE_RE = re.compile(r"^[a-z][a-z0-9-:.]*:[a-z]+-[a-z]+[0-9]+:[a-z]([a-z0-9-]*[a-z0-9])?$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_HOST_PATTERN_RE = re.compile(r"^[A-Za-z0-9*.\[\]:_-]+$")
_SCHEME_RE = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)

# Host headers that must keep working whatever ALLOWED_HOSTS says: the local health checks and a
# user on the same machine (MLflow drops its localhost defaults once --allowed-hosts is given).
LOCAL_HOSTS = ("localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[::1]", "[[]::1]:*")


def loopback_hosts(port: int) -> tuple[str, ...]:
    """The Host headers of this machine's loopback names at `port`: all local mode accepts unless
    told more. MLflow's defaults also accept `10.*` or `192.168.*`, which match DNS names
    (`10.attacker.example`) a rebinding page can point at 127.0.0.1."""
    names = ("127.0.0.1", "localhost", "[::1]")
    return (*names, *(f"{name}:{port}" for name in names))


@dataclass(frozen=True)
class Settings:
    """Everything the entrypoint needs, validated; `db_uri` holds the password, never log it."""

    db_uri: str
    artifact_root: str
    artifact_mode: str = "proxied"
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    allowed_hosts: tuple[str, ...] = ()
    workers: int = DEFAULT_WORKERS
    pool: budget.Pool | None = None
    migrate: str = "auto"
    db_wait_seconds: float = DEFAULT_DB_WAIT_SECONDS
    log_format: str = "json"
    gateway: bool = False  # the passphrase stays in the environment, never in Settings

    @property
    def db_kind(self) -> str:
        return "sqlite" if self.db_uri.startswith("sqlite") else "postgresql"

    @property
    def safe_db_uri(self) -> str:
        return redact(self.db_uri)


def _fail(name: str, problem: str) -> ServerEnvError:
    return ServerEnvError(f"{name}: {problem}; expected {VARIABLES[name]}")


def _get(env: Mapping[str, str], name: str) -> str | None:
    """The stripped value, or None when unset or blank (Cloud Run sets empty strings)."""
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _int(env: Mapping[str, str], name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _fail(name, f"{raw!r} is not an integer") from None
    if value < lo or (hi is not None and value > hi):
        raise _fail(name, f"{value} is out of range")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() not in choices:
        raise _fail(name, f"{raw!r} is not allowed")
    return raw.lower()


def normalize_db_uri(uri: str) -> str:
    """Pin PostgreSQL URIs to psycopg2: SQLAlchemy 2.1 picks psycopg (v3) for plain postgresql://."""
    for prefix in ("postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg2://" + uri[len(prefix) :]
    return uri


def _db_uri_from_uri(raw: str) -> str:
    uri = normalize_db_uri(raw)
    match = _SCHEME_RE.match(uri)
    if not match:
        raise _fail("DB_URI", "not a URI (its value is not shown: it may hold a password)")
    scheme = match.group(1).lower()
    if scheme == "postgresql+psycopg2":
        parts = urlsplit(uri)
        if not parts.path.strip("/"):
            raise _fail("DB_URI", "the database name is missing")
        if not parts.hostname and "host=" not in parts.query:
            raise _fail("DB_URI", "the host is missing (add @host:port or ?host=/cloudsql/...)")
        return uri
    if scheme == "sqlite":
        if not uri.startswith("sqlite:////") and not re.match(r"^sqlite:///[A-Za-z]:", uri):
            raise _fail("DB_URI", "a SQLite path must be absolute (sqlite:////abs/path/mlflow.db)")
        return uri
    raise _fail("DB_URI", f"unsupported scheme {scheme!r} (this image ships psycopg2 and SQLite only)")


def _db_uri_from_parts(env: Mapping[str, str]) -> str:
    present = [n for n in ("DB_USER", "DB_PASSWORD", "DB_NAME", "INSTANCE_CONNECTION_NAME", "DB_HOST") if _get(env, n)]
    if not present:
        raise ServerEnvError(
            "DB_URI: not set; expected DB_URI, or DB_USER, DB_PASSWORD, DB_NAME and "
            "INSTANCE_CONNECTION_NAME (or DB_HOST)"
        )
    for name in ("DB_USER", "DB_PASSWORD", "DB_NAME"):
        if _get(env, name) is None:
            raise _fail(name, "not set (DB_URI is not set either)")
    user = quote(_get(env, "DB_USER"), safe="")
    password = quote(env["DB_PASSWORD"], safe="")  # not stripped: spaces may be part of it
    name = quote(_get(env, "DB_NAME"), safe="")
    instance = _get(env, "INSTANCE_CONNECTION_NAME")
    host = _get(env, "DB_HOST")
    if instance:
        if not _INSTANCE_RE.match(instance):
            raise _fail("INSTANCE_CONNECTION_NAME", f"{instance!r} is malformed")
        return f"postgresql+psycopg2://{user}:{password}@/{name}?host=/cloudsql/{instance}"
    if not host:
        raise ServerEnvError(
            "INSTANCE_CONNECTION_NAME: not set; expected project:region:instance, "
            "or DB_HOST (and DB_PORT) for a TCP connection"
        )
    if not re.match(r"^[A-Za-z0-9.:_\[\]-]+$", host) or "/" in host:
        raise _fail("DB_HOST", f"{host!r} is not a host name or IP")
    port = _int(env, "DB_PORT", 5432, 1, 65535)
    return f"postgresql+psycopg2://{user}:{password}@{host}:{port}/{name}"


def _artifact_root(env: Mapping[str, str]) -> str:
    root = _get(env, "ARTIFACT_ROOT")
    if root is None:
        raise _fail("ARTIFACT_ROOT", "not set (artifacts on the container's disk would be lost)")
    if root.startswith("gs://"):
        bucket = root[len("gs://") :].split("/", 1)[0]
        if not _BUCKET_RE.match(bucket):
            raise _fail("ARTIFACT_ROOT", f"{bucket!r} is not a valid bucket name")
        return root.rstrip("/")
    if _SCHEME_RE.match(root):
        if root.startswith("file:///"):
            return root
        raise _fail("ARTIFACT_ROOT", f"{root!r} uses an unsupported scheme")
    if not root.startswith("/"):
        raise _fail("ARTIFACT_ROOT", f"{root!r} is not absolute")
    return root


def _allowed_hosts(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _get(env, "ALLOWED_HOSTS")
    if raw is None:
        return ()
    hosts = [h.strip() for h in raw.split(",") if h.strip()]
    for host in hosts:
        if "://" in host or "/" in host:
            raise _fail("ALLOWED_HOSTS", f"{host!r} is a URL, give the host name only")
        if not _HOST_PATTERN_RE.match(host):
            raise _fail("ALLOWED_HOSTS", f"{host!r} is not a host name or pattern")
    return tuple(dict.fromkeys(hosts))


def _gateway(env: Mapping[str, str]) -> bool:
    on = _choice(env, "GATEWAY", "off", ("on", "off")) == "on"
    if on and _get(env, PASSPHRASE_ENV) is None:
        raise _fail(PASSPHRASE_ENV, "not set while GATEWAY is on (MLflow would use its public default)")
    return on


def _pool(env: Mapping[str, str], workers: int, db_kind: str, serving: bool = True) -> budget.Pool | None:
    connections = _int(env, "DB_CONNECTIONS", None, 1)
    size = _int(env, "DB_POOL_SIZE", None, 1)
    overflow = _int(env, "DB_MAX_OVERFLOW", None, 0)
    if db_kind == "sqlite":
        return None  # SQLite has no server-side connection limit to budget
    if size is not None or overflow is not None:
        if size is None:
            raise _fail("DB_POOL_SIZE", "not set while DB_MAX_OVERFLOW is")
        pool = budget.Pool(pool_size=size, max_overflow=overflow or 0)
        if pool.per_engine < budget.MIN_POOL_CONNECTIONS:
            raise _fail(
                "DB_POOL_SIZE",
                f"DB_POOL_SIZE + DB_MAX_OVERFLOW must be at least {budget.MIN_POOL_CONNECTIONS} "
                "(one MLflow request can hold two connections)",
            )
        return pool
    connections = connections or DEFAULT_DB_CONNECTIONS
    if serving and permissions.enabled(env):
        # The permission store's own small pool per worker comes out of the same budget.
        connections -= workers * permissions.AUTH_POOL_CONNECTIONS
    try:
        return budget.pool_for(connections, workers)
    except ValueError as err:
        raise _fail("DB_CONNECTIONS", str(err)) from None


def settings_from_env(env: Mapping[str, str], *, serving: bool = True) -> Settings:
    """Validate every variable (no I/O) and return the server's settings.

    `serving=False` (the migration job) needs only the database: ARTIFACT_ROOT may be unset.
    """
    raw_uri = _get(env, "DB_URI")
    db_uri = _db_uri_from_uri(raw_uri) if raw_uri else _db_uri_from_parts(env)
    artifact_root = _artifact_root(env) if serving or _get(env, "ARTIFACT_ROOT") else ""
    artifact_mode = _choice(env, "ARTIFACT_MODE", "proxied", ("proxied", "direct"))
    port = _int(env, "PORT", DEFAULT_PORT, 1, 65535)
    host = _get(env, "HOST") or "0.0.0.0"
    if not re.match(r"^[A-Za-z0-9.:\[\]-]+$", host):
        raise _fail("HOST", f"{host!r} is not an address")
    workers = _int(env, "WORKERS", None, 1, 16) or default_workers()
    settings = Settings(
        db_uri=db_uri,
        artifact_root=artifact_root,
        artifact_mode=artifact_mode,
        host=host,
        port=port,
        allowed_hosts=_allowed_hosts(env),
        workers=workers,
        pool=None,
        migrate=_choice(env, "DB_MIGRATE", "auto", ("auto", "upgrade", "never")),
        db_wait_seconds=_float(env, "DB_WAIT_SECONDS", DEFAULT_DB_WAIT_SECONDS),
        log_format=_choice(env, "LOG_FORMAT", "json", ("json", "text")),
        gateway=_gateway(env),
    )
    pool = _pool(env, workers, settings.db_kind, serving)
    return Settings(**{**settings.__dict__, "pool": pool})


def available_cpus() -> int:
    """CPUs this process may run on: its affinity, lowered by a cgroup v2 CPU quota (what Cloud
    Run's cpu setting and `docker --cpus` become)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def default_workers() -> int:
    """Why one per CPU: every request handler is CPU-bound Python under one GIL per process, so a
    second CPU serves requests only through a second worker (bench: search_runs and log-batch
    nearly double on 2 CPUs); on Cloud Run's default 1 vCPU this is 1."""
    return min(available_cpus(), MAX_DEFAULT_WORKERS)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _fail(name, f"{raw!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise _fail(name, f"{raw!r} is out of range")
    return value
