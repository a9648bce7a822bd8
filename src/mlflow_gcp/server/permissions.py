"""Per-experiment and per-model permissions: MLflow's own auth app, with Google identities.

MLflow's basic-auth app (`mlflow.server.auth`) keeps users and their READ / EDIT / MANAGE /
NO_PERMISSIONS grants on experiments, registered models and the rest in its own database, checks
every request, gives the creator of an experiment or model MANAGE, and filters searches to what
the user may read. Its `authorization_function` names the user of a request; ours
(`authenticate`) answers with the caller's verified Google identity (server/identity.py) and
creates that MLflow user on first sight, so MLflow's `default_permission` applies to it. Users
listed in MLFLOW_GCP_ADMINS are MLflow admins (everything allowed, permission API included).
Passwords are never used: each user gets a random one nobody knows.

Settings (environment):
  MLFLOW_GCP_PERMISSIONS         `1` turns this on (access.permissions in the config)
  MLFLOW_GCP_ADMINS              comma list of admin emails (access.admins)
  MLFLOW_GCP_DEFAULT_PERMISSION  READ (default), EDIT, MANAGE or NO_PERMISSIONS
  AUTH_DB_URI                    the permission store; default: the tracking database's server,
                                 database `<name>_permissions` (SQLite: `<file>-permissions.db`)
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from urllib.parse import urlsplit, urlunsplit

from mlflow_gcp import budget


def _secrets():
    """`secrets`, imported when a token is made: it loads OpenSSL's libcrypto (~4 MiB of RSS), and
    the supervisor, which imports this module and lives as long as the container, makes none
    unless permissions are on."""
    import secrets

    return secrets


PERMISSIONS_ENV = "MLFLOW_GCP_PERMISSIONS"
ADMINS_ENV = "MLFLOW_GCP_ADMINS"
DEFAULT_PERMISSION_ENV = "MLFLOW_GCP_DEFAULT_PERMISSION"
AUTH_DB_URI_ENV = "AUTH_DB_URI"
AUTH_CONFIG_ENV = "MLFLOW_AUTH_CONFIG_PATH"  # MLflow's
PERMISSION_NAMES = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
AUTHORIZATION_FUNCTION = "mlflow_gcp.server.permissions:authenticate"
# The admin MLflow bootstraps when its user table is empty, when no admin email is configured.
FALLBACK_ADMIN = "mlflow-gcp-admin"
DB_SUFFIX = "_permissions"
# Connections per worker for the permission store (pool 1 + overflow 1): taken out of the
# instance's DB_CONNECTIONS budget (server/env.py).
AUTH_POOL_CONNECTIONS = budget.PERMISSION_STORE_CONNECTIONS
# How long a worker trusts an EDIT decision on the fast metric path; a revoked grant stops
# working there at most this much later (every other request is checked afresh by MLflow).
FAST_PATH_TTL_SECONDS = 10.0


class PermissionsConfigError(ValueError):
    pass


def enabled(env=os.environ) -> bool:
    return env.get(PERMISSIONS_ENV, "").strip() == "1"


def admins(env=os.environ) -> list[str]:
    return [a.strip().lower() for a in env.get(ADMINS_ENV, "").split(",") if a.strip()]


def default_permission(env=os.environ) -> str:
    value = env.get(DEFAULT_PERMISSION_ENV, "").strip().upper() or "READ"
    if value not in PERMISSION_NAMES:
        raise PermissionsConfigError(
            f"{DEFAULT_PERMISSION_ENV}: {value!r} is not one of {', '.join(PERMISSION_NAMES)}")
    return value


def auth_db_uri(db_uri: str, env=os.environ) -> str:
    """The permission store's URI: AUTH_DB_URI, else a sibling of the tracking database."""
    explicit = env.get(AUTH_DB_URI_ENV, "").strip()
    if explicit:
        return explicit
    if db_uri.startswith("sqlite:"):
        base = db_uri[:-3] if db_uri.endswith(".db") else db_uri
        return f"{base}-permissions.db"
    parts = urlsplit(db_uri)
    name = parts.path.strip("/")
    return urlunsplit(parts._replace(path=f"/{name}{DB_SUFFIX}"))


def config_text(database_uri: str, env=os.environ) -> str:
    """MLflow's auth config (basic_auth.ini) for this deployment."""
    names = admins(env)
    return "\n".join([
        "[mlflow]",
        f"default_permission = {default_permission(env)}",
        f"database_uri = {database_uri}",
        f"admin_username = {names[0] if names else FALLBACK_ADMIN}",
        # Only used if that admin does not exist yet; nobody logs in with a password here.
        f"admin_password = {_secrets().token_urlsafe(24)}",
        f"authorization_function = {AUTHORIZATION_FUNCTION}",
        "",
    ])


def configure(db_uri: str, env=os.environ) -> str:
    """Write the auth config for this process (once) and point MLflow at it; returns its path.
    Must run before `mlflow.server.auth` is imported: it reads its config on import."""
    if env.get(AUTH_CONFIG_ENV):
        return env[AUTH_CONFIG_ENV]
    fd, path = tempfile.mkstemp(prefix="mlflow-gcp-auth-", suffix=".ini")
    with os.fdopen(fd, "w") as fh:  # mode 0600: it names the database (its password included)
        fh.write(config_text(auth_db_uri(db_uri, env), env))
    env[AUTH_CONFIG_ENV] = path
    # MLflow's auth app protects its sign-up form with CSRF and wants a static secret; we serve
    # no form that needs it across workers, so a per-process secret does.
    env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", _secrets().token_hex(32))
    return path


def launch_env(db_uri: str, pooled: bool, env=os.environ) -> dict[str, str]:
    """What the supervisor adds to the workers' environment (nothing when this is off)."""
    if not enabled(env):
        return {}
    from mlflow_gcp.server.pool import with_pool

    uri = auth_db_uri(db_uri, env)
    return {
        # A small pool of its own per worker: a permission check is a few short queries.
        AUTH_DB_URI_ENV: with_pool(uri, 1, AUTH_POOL_CONNECTIONS - 1) if pooled and not uri.startswith("sqlite") else uri,
        # The schema step migrated the store and created the first admin (`migrate` below), so
        # workers only open it, as under `mlflow server` (MLflow's own flag for that).
        "_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED": "true",
        # One secret for all workers of this boot (MLflow's CSRF check on its sign-up form).
        "MLFLOW_FLASK_SERVER_SECRET_KEY": env.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or _secrets().token_hex(32),
    }


def ensure_database(uri: str) -> bool:
    """Create the permission store's PostgreSQL database when missing; True if created. (The
    Cloud SQL user mlflow-gcp creates may create databases: cloudsqlsuperuser has CREATEDB.)"""
    if uri.startswith("sqlite"):
        return False
    import sqlalchemy

    name = urlsplit(uri).path.strip("/")
    server = sqlalchemy.create_engine(urlunsplit(urlsplit(uri)._replace(path="/postgres")),
                                      isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    try:
        with server.connect() as conn:
            found = conn.execute(sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                 {"n": name}).scalar()
            if not found:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
            return not found
    finally:
        server.dispose()


def _has_users_table(uri: str) -> bool:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        return sqlalchemy.inspect(engine).has_table("users")
    finally:
        engine.dispose()


def migrate(db_uri: str, env=os.environ) -> str:
    """Create the permission store (database, schema, first admin) or upgrade it: the migration
    job and the server's schema step. MLflow's own code does the schema and the admin. A new
    store (permissions just turned on) gets the grants that keep existing experiments usable."""
    uri = auth_db_uri(db_uri, env)
    ensure_database(uri)
    new = not _has_users_table(uri)
    configure(db_uri, env)
    from mlflow.server import auth

    auth.bootstrap_admin_user()
    if not new:
        return "permission store is current"
    granted = grant_existing(db_uri, auth.store)
    return f"permission store created; {granted} grant(s) for existing experiments' users"


def grant_existing(db_uri: str, store) -> int:
    """Permissions turned on for a deployment already in use: each experiment's users keep it.

    Creators are inferred from runs' users (verified Google identities since the server names
    them): the user of an experiment's first run gets MANAGE, the other users of its runs EDIT.
    Everyone else gets the deployment's default permission (READ unless configured), so every
    experiment stays readable by all; experiments without such runs are managed by admins."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(db_uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT experiment_id, user_id FROM runs WHERE user_id LIKE '%@%' "
                "AND lifecycle_stage = 'active' ORDER BY experiment_id, start_time, run_uuid"
            )).all()
    finally:
        engine.dispose()
    grants: dict[tuple[str, str], str] = {}
    for experiment_id, user in rows:
        key = (str(experiment_id), user.strip().lower())
        first = not any(e == key[0] for e, _ in grants)
        grants.setdefault(key, "MANAGE" if first else "EDIT")
    for (experiment_id, user), permission in grants.items():
        if not store.has_user(user):
            store.create_user(user, _secrets().token_urlsafe(24))
        store.grant_user_resource_permission(user, "experiment", experiment_id, permission)
    return len(grants)


# --- per request -----------------------------------------------------------------------------

_known: dict[str, bool] = {}  # email -> is admin, for users this worker has seen
_known_lock = threading.Lock()


def _ensure_user(email: str) -> None:
    """Create the MLflow user for `email` on first sight; keep its admin flag as configured."""
    want_admin = email in admins()
    if _known.get(email) is want_admin:
        return
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth import store

    with _known_lock:
        if not store.has_user(email):
            try:
                store.create_user(email, _secrets().token_urlsafe(24), is_admin=want_admin)
            except MlflowException:
                pass  # another worker created it meanwhile
        if store.get_user(email).is_admin is not want_admin:
            store.update_user(email, is_admin=want_admin)
        _known[email] = want_admin


def authenticate():
    """MLflow's authorization_function: the verified caller as a werkzeug Authorization."""
    from flask import Response
    from werkzeug.datastructures import Authorization

    from mlflow_gcp.server import identity

    email = identity.flask_caller()
    if email is None:
        return Response("A valid Google ID token is required.", status=401,
                        headers={"WWW-Authenticate": "Bearer"})
    _ensure_user(email)
    return Authorization("basic", {"username": email, "password": ""})


def build_app():
    """MLflow's FastAPI app with its auth app on our authorization function."""
    from mlflow.server import app as flask_app
    from mlflow.server.auth import create_app as create_auth_app

    return create_auth_app(flask_app)


class FastPathCheck:
    """MLflow's rule for updating a run (EDIT on its experiment, or a run grant), for the fast
    metric path, which skips MLflow's own checks.

    MLflow's requirement for a run depends only on the run's experiment (a run never moves), so
    it is kept per run for good, and the decision per (caller, experiment) for
    FAST_PATH_TTL_SECONDS: a new run in a known experiment costs one run lookup, no permission
    query."""

    MAX_ENTRIES = 50_000

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._runs: dict[str, tuple] = {}  # run id -> (anchor, requirements), from MLflow
        self._decisions: dict[tuple[str, tuple], tuple[bool, float]] = {}

    def cached(self, email: str | None, run_id: str) -> bool | None:
        """The remembered decision, or None (then call this object, in a worker thread: it may
        query the stores)."""
        if email is None:
            return False
        resolved = self._runs.get(run_id)
        if resolved is None:
            return None
        hit = self._decisions.get((email, resolved[0]))
        return hit[0] if hit is not None and hit[1] > self.clock() else None

    def __call__(self, email: str | None, run_id: str) -> bool:
        known = self.cached(email, run_id)
        if known is not None:
            return known
        resolved = self._runs.get(run_id) or self._resolve(run_id)
        if resolved is None:
            return False  # MLflow answers (404 or its own error) on its path
        if len(self._runs) > self.MAX_ENTRIES:
            self._runs.clear()
        self._runs[run_id] = resolved
        known = self.cached(email, run_id)  # a run of an experiment decided already
        if known is not None:
            return known
        now = self.clock()
        allowed = self._decide(email, resolved)
        if len(self._decisions) > self.MAX_ENTRIES:
            self._decisions.clear()
        self._decisions[(email, resolved[0])] = (allowed, now + FAST_PATH_TTL_SECONDS)
        return allowed

    @staticmethod
    def _resolve(run_id: str) -> tuple | None:
        """(anchor, requirements) of MLflow's validator for runs/log-batch, or None."""
        from mlflow.server import auth

        try:
            resolved = auth._run_requirement(run_id, "update")
        except Exception:
            return None
        return None if resolved is None else (resolved[0], tuple(resolved[1]))

    @staticmethod
    def _decide(email: str, resolved: tuple) -> bool:
        """MLflow's own decision; anything unexpected is False, and MLflow decides on its path."""
        from mlflow.server import auth

        try:
            _ensure_user(email)
            if auth.store.get_user(email).is_admin:
                return True
            anchor, requirements = resolved
            return bool(auth.authorize(email, anchor, list(requirements)))
        except Exception:
            return False
