"""server/permissions.py without a server: where the store lives, MLflow's auth config, and the
fast path's cached decision."""

from __future__ import annotations

import configparser

import pytest

from mlflow_gcp.server import permissions

from tests.support.clock import FakeClock


def test_the_permission_store_is_a_sibling_database_unless_named():
    pg = "postgresql+psycopg2://mlflow:pw@/mlflow?host=/cloudsql/p:r:i"
    assert permissions.auth_db_uri(pg, {}) == "postgresql+psycopg2://mlflow:pw@/mlflow_permissions?host=/cloudsql/p:r:i"
    assert permissions.auth_db_uri("sqlite:////data/mlflow.db", {}) == "sqlite:////data/mlflow-permissions.db"
    assert permissions.auth_db_uri(pg, {permissions.AUTH_DB_URI_ENV: "sqlite:////x.db"}) == "sqlite:////x.db"


def test_mlflows_auth_config_names_our_authorization_function_and_the_first_admin():
    env = {permissions.ADMINS_ENV: "Lead@Acme.com, ops@acme.com", permissions.DEFAULT_PERMISSION_ENV: "edit"}
    parser = configparser.ConfigParser()
    parser.read_string(permissions.config_text("sqlite:////tmp/p.db", env))
    section = parser["mlflow"]
    assert section["authorization_function"] == "mlflow_gcp.server.permissions:authenticate"
    assert section["admin_username"] == "lead@acme.com" and section["default_permission"] == "EDIT"
    assert len(section["admin_password"]) >= 12  # MLflow's rule; random, never used
    with pytest.raises(permissions.PermissionsConfigError, match="not one of"):
        permissions.default_permission({permissions.DEFAULT_PERMISSION_ENV: "WRITE"})


def test_workers_get_a_small_pool_of_their_own_and_skip_the_bootstrap():
    env = {permissions.PERMISSIONS_ENV: "1"}
    got = permissions.launch_env("postgresql+psycopg2://u@h:5432/mlflow", pooled=True, env=env)
    assert got[permissions.AUTH_DB_URI_ENV].startswith("postgresql+psycopg2://u@h:5432/mlflow_permissions?plugin=")
    assert "mlflow_gcp_pool_size=1&mlflow_gcp_max_overflow=1" in got[permissions.AUTH_DB_URI_ENV]
    assert got["_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED"] == "true"
    assert permissions.launch_env("postgresql+psycopg2://u@h:5432/mlflow", pooled=True, env={}) == {}


class _Counting(permissions.FastPathCheck):
    """MLflow's lookups replaced by counters: runs r1 and r2 are in experiment 7, r3 in 8."""

    def __init__(self, clock, answer):
        super().__init__(clock=clock)
        self.answer, self.asked, self.resolved = answer, 0, 0

    def _resolve(self, run_id):
        self.resolved += 1
        return None if run_id == "gone" else (("experiment", "8" if run_id == "r3" else "7"), ())

    def _decide(self, email, resolved):
        self.asked += 1
        return self.answer


def test_the_fast_path_remembers_a_decision_per_experiment_briefly():
    clock = FakeClock()
    check = _Counting(clock, answer=True)
    assert check.cached("bob@acme.com", "r1") is None  # unknown: ask, in a thread
    assert check("bob@acme.com", "r1") is True
    assert check.cached("bob@acme.com", "r1") is True and check.asked == 1
    assert check("bob@acme.com", "r2") is True and check.asked == 1  # same experiment: no query
    assert check.cached("bob@acme.com", "r2") is True
    assert check.cached("alice@acme.com", "r1") is None  # per caller
    assert check("bob@acme.com", "r3") is True and check.asked == 2  # another experiment
    check.answer = False  # revoked
    clock.advance(permissions.FAST_PATH_TTL_SECONDS + 0.1)
    assert check.cached("bob@acme.com", "r1") is None
    assert check("bob@acme.com", "r1") is False and check.asked == 3
    assert check.resolved == 3  # a run's experiment is looked up once
    assert check(None, "r1") is False and check.asked == 3  # no verified caller: never allowed
    assert check("bob@acme.com", "gone") is False  # MLflow answers on its own path
