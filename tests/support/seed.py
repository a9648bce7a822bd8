"""What the old scripts left behind, made real for tests: a database whose MLflow schema is an old
release's and belongs to a non-superuser role (as on Cloud SQL, where the hand-made user created
the tables), and an MLflow 2.9.2 to write with.

Roles are cluster-wide on the shared PostgreSQL: they get unique names and are dropped after.
MLflow 2.9.2 lives in its own virtualenv, built once under MLFLOW2_VENV (or the path in
MLFLOW_GCP_TEST_MLFLOW2_VENV); where it cannot be installed, the tests that need it skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import pg_admin, pg_url

SEED_MLFLOW = "2.9.2"
SEED_REVISION = "acf3f17fdcc7"  # MLflow 2.9.2's schema head (its migration scripts)
MLFLOW2_VENV = Path(os.environ.get("MLFLOW_GCP_TEST_MLFLOW2_VENV", f"/tmp/mlflow-gcp-test-mlflow-{SEED_MLFLOW}"))
# What MLflow 2.9.2 needs on Python 3.11 without pulling what it predates (numpy 2, SQLAlchemy 2.1).
MLFLOW2_REQUIREMENTS = [f"mlflow=={SEED_MLFLOW}", "psycopg2-binary", "numpy<2", "pandas<2.2", "google-auth",
                        "google-cloud-storage", "sqlalchemy<2.1"]



@contextlib.contextmanager
def pg_roles(*prefixes: str):
    """Login roles without superuser, CREATEDB or CREATEROLE (what a Cloud SQL user can do to
    another's tables: nothing); dropped afterwards with whatever they own."""
    names = [f"{p}_{uuid.uuid4().hex[:8]}" for p in prefixes]
    for name in names:
        pg_admin(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
    try:
        yield names
    finally:
        for name in names:
            with contextlib.suppress(Exception):
                pg_admin(f'DROP ROLE IF EXISTS "{name}"')


def owned_database(owner: str, readers: tuple[str, ...] = ()) -> tuple[str, str]:
    """(name, admin URL) of a new database owned by `owner`; `readers` may connect. The caller
    drops it (drop_database) before the roles."""
    name = f"mlflow_gcp_seed_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    for reader in readers:
        pg_admin(f'GRANT CONNECT ON DATABASE "{name}" TO "{reader}"')
    return name, pg_url(name)


def drop_database(name: str) -> None:
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def as_user(url: str, user: str) -> str:
    """The same database, connecting as `user` (the shared server trusts local connections)."""
    head, _, tail = url.partition("://")
    return f"{head}://{user}@{tail.split('@', 1)[-1]}"


def old_schema(url: str, revision: str = SEED_REVISION) -> None:
    """An old release's schema, made as MLflow makes it (the initial tables, then the migration
    scripts, the same that release shipped) but only up to `revision`."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import InitialBase, _get_alembic_config

    engine = sqlalchemy.create_engine(url)
    try:
        InitialBase.metadata.create_all(engine)
        with engine.begin() as conn:
            config = _get_alembic_config(str(engine.url.render_as_string(hide_password=False)))
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def revision_of(url: str) -> str | None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def mlflow2_python() -> str:
    """The python of a virtualenv with MLflow 2.9.2, built once (under a lock: tests in parallel
    wait for one build); skips the test when it cannot be installed here."""
    python = MLFLOW2_VENV / "bin" / "python"
    ready = MLFLOW2_VENV / ".ready"
    MLFLOW2_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(str(MLFLOW2_VENV) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = "\n".join(MLFLOW2_REQUIREMENTS)
        if not ready.exists() or ready.read_text() != wanted:
            made = subprocess.CompletedProcess([], 0)
            if not python.exists():
                made = subprocess.run([sys.executable, "-m", "venv", str(MLFLOW2_VENV)], capture_output=True, text=True)
            if made.returncode == 0:
                made = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                       *MLFLOW2_REQUIREMENTS], capture_output=True, text=True, timeout=1800)
            if made.returncode != 0:
                pytest.skip(f"MLflow {SEED_MLFLOW} cannot be installed here: {(made.stderr or '').strip()[-300:]}")
            ready.write_text(wanted)
    return str(python)
