"""A database made by an older MLflow (the old scripts' 2.9.2): never upgraded without being asked,
both versions named, and never by a user who does not own the tables (PostgreSQL, real roles)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlflow_gcp.server import local as local_mod
from mlflow_gcp.server import migrate
from tests.conftest import clean_env
from tests.integration.test_server_startup import run_entrypoint
from tests.support import seed

pytestmark = pytest.mark.postgres

MLFLOW_NOW = migrate.installed_mlflow_version()


def _env(url: str, **extra) -> dict:
    return {"DB_URI": url, "ARTIFACT_ROOT": "gs://acme-mlflow", "LOG_FORMAT": "text", **extra}


def test_the_seed_revision_is_named_as_its_release():
    assert migrate.describe_revision(seed.SEED_REVISION) == f"MLflow 2.9.2 (schema revision {seed.SEED_REVISION})"
    head = migrate.head_revision_from_files()
    assert migrate.describe_revision(head, head) == f"MLflow {MLFLOW_NOW} (schema revision {head})"
    assert migrate.describe_revision("0123abcd") == "schema revision 0123abcd"


def test_check_calls_a_2_9_2_schema_old_not_missing(new_database):
    url = new_database()
    seed.old_schema(url)
    refused = run_entrypoint(_env(url), "check")
    assert refused.returncode == 4
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"the database holds MLflow 2.9.2 (schema revision {seed.SEED_REVISION}), "
                           f"older than this server's MLflow {MLFLOW_NOW}")
    assert "no (complete)" not in line and "one-way" in line


def test_serving_with_auto_refuses_to_upgrade_an_existing_schema(new_database):
    url = new_database()
    seed.old_schema(url)
    refused = run_entrypoint(_env(url, DB_MIGRATE="auto"), "prepare")
    assert refused.returncode == 4, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert "refusing to upgrade an existing schema without being asked" in line
    assert f"MLflow 2.9.2 (schema revision {seed.SEED_REVISION})" in line and f"MLflow {MLFLOW_NOW}" in line
    assert "one-way" in line and "to roll back, restore that backup" in line
    assert "--upgrade-db" in line and "DB_MIGRATE=upgrade" in line
    assert seed.revision_of(url) == seed.SEED_REVISION  # untouched


def test_upgrade_when_asked_names_both_versions(new_database):
    url = new_database()
    seed.old_schema(url)
    done = run_entrypoint(_env(url, DB_MIGRATE="upgrade"), "prepare")
    assert done.returncode == 0, done.stderr
    assert f"upgrading the schema (one-way): the database holds MLflow 2.9.2" in done.stderr
    assert seed.revision_of(url) == migrate.head_revision_from_files()


def test_an_empty_database_is_still_created_with_auto(new_database):
    url = new_database()
    done = run_entrypoint(_env(url, DB_MIGRATE="auto"), "prepare")
    assert done.returncode == 0, done.stderr
    assert seed.revision_of(url) == migrate.head_revision_from_files()


def test_the_migration_job_stops_before_altering_tables_another_user_owns():
    # As on Cloud SQL: the old scripts' user made the tables; `up` would connect as another.
    with seed.pg_roles("seedowner", "newuser") as (owner, other):
        name, admin_url = seed.owned_database(owner, readers=(other,))
        try:
            seed.old_schema(seed.as_user(admin_url, owner))
            refused = run_entrypoint(_env(seed.as_user(admin_url, other)), "migrate")
            assert refused.returncode == 1, refused.stderr
            line = refused.stderr.strip().splitlines()[-1]
            assert line.startswith(f"the MLflow tables belong to database user '{owner}', not '{other}'")
            assert "nothing was changed" in line and f'set database.user = "{owner}"' in line
            assert seed.revision_of(admin_url) == seed.SEED_REVISION
            # Its owner may: the same job as the owner upgrades it.
            done = run_entrypoint(_env(seed.as_user(admin_url, owner)), "migrate")
            assert done.returncode == 0, done.stderr
            assert seed.revision_of(admin_url) == migrate.head_revision_from_files()
        finally:
            seed.drop_database(name)


def test_local_upgrades_only_with_the_flag(tmp_path):
    plain = local_mod.local_env(local_mod.LocalOptions(data_dir=tmp_path))
    asked = local_mod.local_env(local_mod.LocalOptions(data_dir=tmp_path, upgrade_db=True))
    assert plain["DB_MIGRATE"] == "auto" and asked["DB_MIGRATE"] == "upgrade"


def test_local_refuses_an_old_database_and_says_why(tmp_path):
    # The user's old SQLite file: the banner must not promise to "create the database", and the
    # one-way upgrade waits for --upgrade-db.
    db = tmp_path / "mlflow.db"
    seed.old_schema(f"sqlite:///{db}")
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow_gcp", "local", "--data-dir", str(tmp_path),
         "--port", str(local_mod.free_port())],
        env=clean_env(), capture_output=True, text=True, timeout=local_mod.HEALTH_TIMEOUT + 60)
    assert proc.returncode != 0
    assert "creates the database" not in proc.stderr
    assert "one made by an older MLflow is left as it is and refused, see --upgrade-db" in proc.stderr
    assert f"the database holds MLflow 2.9.2 (schema revision {seed.SEED_REVISION})" in proc.stderr
    assert "Copy the SQLite file first" in proc.stderr
    assert seed.revision_of(f"sqlite:///{db}") == seed.SEED_REVISION
