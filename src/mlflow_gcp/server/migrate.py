"""Wait for the database, then create or upgrade MLflow's schema exactly once.

`mlflow server` creates the tables itself on an empty database and refuses to start on an old
schema. Two Cloud Run instances starting together on an empty database would both run the
initial migration and one of them would crash; so the entrypoint does it first, holding a
PostgreSQL advisory lock (a local file lock for SQLite), and `mlflow server` then finds the schema
current. With DB_MIGRATE=never it only checks and refuses to start on an old schema.

Creating the schema in an empty database is always safe. Upgrading an existing one is not: it is
one-way (the old MLflow then refuses the database: "Can't locate revision"), so it happens only
when asked for (`migrate`, the job `up` runs after an on-demand backup; DB_MIGRATE=upgrade;
`mlflow-gcp local --upgrade-db`). DB_MIGRATE=auto creates, and refuses to upgrade with a message
naming both MLflow versions, the backup to take first and how to roll back. Before an upgrade the
schema's owner is checked: PostgreSQL lets only the owner of a table (or a member of its role)
alter it, and Cloud SQL users are not superusers.

MLflow, SQLAlchemy and alembic are imported inside the functions: they take seconds to import
and only these steps need them.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import logging
import os
import re
import time
from pathlib import Path

from mlflow_gcp.errors import DatabaseUnavailable, MlflowGcpError
from mlflow_gcp.server.env import Settings, redact

# Any fixed 64-bit number works; every instance must use the same one. ASCII "mlflowgc".
ADVISORY_LOCK_KEY = 0x6D6C666C6F776763
MIGRATE_HINT = (
    "run `python -m mlflow_gcp.server migrate` with the same environment (the migration job; back "
    "the database up first when it holds data), or set DB_MIGRATE=auto (an empty database) or "
    "DB_MIGRATE=upgrade (an older MLflow's schema)"
)

# Errors that waiting does not cure: fail at once instead of retrying for DB_WAIT_SECONDS.
_PERMANENT = (
    "password authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "invalid dsn",
)


class SchemaOutOfDate(MlflowGcpError):
    """DB_MIGRATE=never and the schema is missing or older than this MLflow, or an existing
    schema would need a (one-way) upgrade nobody asked for."""

    exit_code = 4


class SchemaOwnedByOther(MlflowGcpError):
    """The MLflow tables belong to another database user, who alone may alter them."""


# The newest schema revision (alembic head) of MLflow releases, read from each release's
# migration scripts; a revision in between is named by the releases around it. The running
# MLflow's own head is added at run time.
RELEASE_HEADS = {
    "acf3f17fdcc7": "2.9.2",
}


def _first_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None) or err
    text = str(orig).strip().splitlines()
    return redact(text[0] if text else type(orig).__name__)


_REVISION_RE = re.compile(r"^revision\s*=\s*['\"](\w+)['\"]", re.MULTILINE)
_DOWN_RE = re.compile(r"^down_revision\s*=\s*(.+)$", re.MULTILINE)


def head_revision_from_files() -> str | None:
    """MLflow's latest schema revision, read from its migration scripts without importing MLflow
    (which takes seconds of every cold start); None when the scripts do not show exactly one head."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.origin:
        return None
    versions = Path(spec.origin).parent / "store" / "db_migrations" / "versions"
    revisions, parents = set(), set()
    for script in versions.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        rev, down = _REVISION_RE.search(text), _DOWN_RE.search(text)
        if rev:
            revisions.add(rev.group(1))
        if down:
            parents.update(re.findall(r"['\"](\w+)['\"]", down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def installed_mlflow_version() -> str:
    try:
        return importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def describe_revision(revision: str | None, head: str | None = None) -> str:
    """'MLflow 2.9.2 (schema revision acf3f17fdcc7)', or the bare revision when no release is known."""
    if revision is None:
        return "no MLflow schema"
    known = dict(RELEASE_HEADS)
    if head:
        known[head] = installed_mlflow_version()
    release = known.get(revision)
    return f"MLflow {release} (schema revision {revision})" if release else f"schema revision {revision}"


def upgrade_warning(current: str | None, head: str, db_kind: str) -> str:
    """What an upgrade of an existing schema means, in one paragraph: versions, one-way, backup,
    rollback."""
    old, new = describe_revision(current, head), describe_revision(head, head)
    backup = ("Copy the SQLite file first" if db_kind == "sqlite" else
              "Back it up first (Cloud SQL: `mlflow-gcp backup create`; elsewhere: pg_dump)")
    return (f"the database holds {old}; this server runs {new}. Upgrading the schema is one-way: "
            f"afterwards the old MLflow cannot open the database (\"Can't locate revision\"). "
            f"{backup}; to roll back, restore that backup and run the old MLflow again")


def current_revision(engine) -> str | None:
    """The database's alembic revision; None when it has no MLflow schema yet."""
    import sqlalchemy

    with engine.connect() as conn:
        if not sqlalchemy.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()


def make_engine(db_uri: str):
    """An engine that keeps no connection open: these steps run once, before the server."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    if db_uri.startswith("sqlite:///"):
        database = sqlalchemy.engine.make_url(db_uri).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"connect_timeout": 5} if db_uri.startswith("postgresql") else {}
    return sqlalchemy.create_engine(db_uri, poolclass=NullPool, connect_args=connect_args)


def wait_for_database(engine, budget_seconds: float, log: logging.Logger, *, sleep=time.sleep) -> None:
    """Connect until it works, for at most `budget_seconds`; DatabaseUnavailable after that."""
    import sqlalchemy

    deadline = time.monotonic() + budget_seconds
    delay, attempt = 0.5, 0
    while True:
        attempt += 1
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            if attempt > 1:
                log.info("database reachable after %d attempts", attempt)
            return
        except sqlalchemy.exc.DBAPIError as err:
            reason = _first_line(err)
            if any(p in reason.lower() for p in _PERMANENT):
                raise DatabaseUnavailable(f"database refused the connection: {reason}") from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"database unreachable after {attempt} attempts in {budget_seconds:g} s: {reason}",
                    hint="check DB_HOST/INSTANCE_CONNECTION_NAME and that the instance is running "
                    "(a paused deployment starts again with `mlflow-gcp resume`); "
                    "DB_WAIT_SECONDS sets the wait",
                ) from None
            pause = min(delay, left)
            log.warning("database not reachable yet (attempt %d, retrying in %.1f s): %s", attempt, pause, reason)
            sleep(pause)
            delay = min(delay * 2, 5.0)


@contextlib.contextmanager
def _exclusive(engine, settings: Settings, log: logging.Logger):
    """Only one process at a time inside: a PostgreSQL advisory lock, or a file lock for SQLite."""
    import sqlalchemy

    if settings.db_kind == "sqlite":
        path = Path(engine.url.database or "mlflow.db")
        with open(path.with_name(path.name + ".migrate-lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        return
    with engine.connect() as conn:
        got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}).scalar()
        if not got:
            log.info("another instance is migrating the schema; waiting for it")
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
            conn.commit()


def schema_state(engine) -> tuple[str | None, str, bool]:
    """(current revision, head revision, all tables present)."""
    from mlflow.store.db import utils

    return utils._get_schema_version(engine), utils._get_latest_schema_revision(), utils._all_tables_exist(engine)


def sqlalchemy_error() -> type[Exception]:
    import sqlalchemy

    return sqlalchemy.exc.SQLAlchemyError


def check_owner(engine) -> None:
    """Refuse, before touching anything, to upgrade tables this user may not alter (PostgreSQL:
    only their owner or a member of the owner's role; Cloud SQL users are not superusers)."""
    import sqlalchemy

    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        row = conn.execute(sqlalchemy.text(
            "SELECT tableowner, current_user, pg_has_role(current_user, tableowner, 'USAGE') "
            "FROM pg_tables WHERE tablename = 'alembic_version' AND schemaname = current_schema()"
        )).first()
    if row is None or row[2]:
        return
    owner, user = row[0], row[1]
    raise SchemaOwnedByOther(
        f"the MLflow tables belong to database user {owner!r}, not {user!r}: PostgreSQL lets only "
        f"their owner alter them, so the schema cannot be upgraded as {user!r}; nothing was changed",
        hint=f"connect as {owner!r}: with mlflow-gcp set database.user = \"{owner}\" in mlflow-gcp.toml "
             "and rerun `mlflow-gcp up` (it adopts that user); elsewhere set DB_USER or the URI's user",
    )


def migrate(engine, settings: Settings, log: logging.Logger, *, upgrade: bool = True) -> str:
    """Bring the schema to this MLflow's head under the lock; returns what was done.

    An empty database gets the schema; an existing older schema is upgraded only with `upgrade`
    (else SchemaOutOfDate saying what that means)."""
    from mlflow.store.db import utils

    with _exclusive(engine, settings, log):
        # Checked again under the lock: another instance may have just finished.
        current, head, complete = schema_state(engine)
        if complete and current == head:
            return f"schema is current ({head})"
        started = time.monotonic()
        if not complete and current is None:
            log.info("creating the MLflow schema")
            utils._initialize_tables(engine)
            done = f"schema created at {head}"
        else:
            if not upgrade:
                raise SchemaOutOfDate(
                    "refusing to upgrade an existing schema without being asked: "
                    + upgrade_warning(current, head, settings.db_kind),
                    hint="then upgrade with `mlflow-gcp local --upgrade-db`, DB_MIGRATE=upgrade, or "
                         "`python -m mlflow_gcp.server migrate` (the migration job)",
                )
            check_owner(engine)
            log.warning("upgrading the schema (one-way): %s", upgrade_warning(current, head, settings.db_kind))
            if not complete:
                utils._initialize_tables(engine)  # what `mlflow server` itself does then
            else:
                utils._upgrade_db(engine)
            done = f"schema upgraded from {current} to {head}"
        return f"{done} in {time.monotonic() - started:.1f} s"


def check(engine) -> str:
    """DB_MIGRATE=never: refuse to go on unless the schema is exactly this MLflow's head."""
    current, head, complete = schema_state(engine)
    if current is None:
        raise SchemaOutOfDate(f"the database has no MLflow schema; {MIGRATE_HINT}")
    if current != head:
        # An older release's schema lacks the newer tables too: it is old, not broken.
        raise SchemaOutOfDate(
            f"the database holds {describe_revision(current, head)}, older than this server's "
            f"{describe_revision(head, head)}; {MIGRATE_HINT}. The upgrade is one-way: "
            "to roll back, restore the backup and run the old MLflow")
    if not complete:
        raise SchemaOutOfDate(f"the database's MLflow schema ({head}) is missing tables; {MIGRATE_HINT}")
    return f"schema is current ({head})"


def route_library_logs(handler: logging.Handler) -> None:
    """Send MLflow's and alembic's log lines through our (redacting) handler."""
    for name in ("mlflow", "alembic"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def prepare(settings: Settings, log: logging.Logger, *, mode: str | None = None) -> str:
    """Wait for the database, then create (auto), create or upgrade (upgrade) or check (never);
    returns a summary line."""
    engine = make_engine(settings.db_uri)
    try:
        if settings.db_kind == "postgresql":
            wait_for_database(engine, settings.db_wait_seconds, log)
        mode = mode or settings.migrate
        try:
            # Fast path, the usual restart: the schema is at the head, no need to import MLflow.
            head = head_revision_from_files()
            if head is not None and current_revision(engine) == head:
                return _with_permission_store(f"schema is current ({head})", engine, settings, log, mode)
            import mlflow  # noqa: F401  (configures its loggers on import; route them after)

            if log.handlers:
                route_library_logs(log.handlers[0])
            if mode == "never":
                done = check(engine)
            else:
                done = migrate(engine, settings, log, upgrade=mode == "upgrade")
            return _with_permission_store(done, engine, settings, log, mode)
        except MlflowGcpError:
            raise
        except Exception as err:  # a failed migration: say what, keep the password out
            if "permission denied" in _first_line(err).lower():
                with contextlib.suppress(sqlalchemy_error()):
                    check_owner(engine)  # says whose tables they are, when that is the reason
            raise MlflowGcpError(f"schema migration failed: {_first_line(err)}") from err
    finally:
        engine.dispose()


def _with_permission_store(done: str, engine, settings: Settings, log: logging.Logger, mode: str) -> str:
    """The permission store (its own database) is migrated by the same step, when it is on."""
    from mlflow_gcp.server import permissions

    if not permissions.enabled():
        return done
    if mode == "never":
        return done + "; permission store not checked (DB_MIGRATE=never)"
    with _exclusive(engine, settings, log):  # two instances starting on a new store
        return f"{done}; {permissions.migrate(settings.db_uri)}"
