"""settings_from_env: every variable validated, nothing connects, no password in any message."""

from __future__ import annotations

import os

import pytest

from mlflow_gcp import budget
from mlflow_gcp.errors import ServerEnvError
from mlflow_gcp.server import env as env_mod
from mlflow_gcp.server.env import VARIABLES, normalize_db_uri, redact, settings_from_env

SECRET = "s3cr:t@/p w%"
BASE = {"DB_URI": "postgresql://u:hunter2@db.internal:5432/mlflow", "ARTIFACT_ROOT": "gs://acme-mlflow/artifacts"}


def parts(**extra):
    env = {
        "DB_USER": "mlflow",
        "DB_PASSWORD": SECRET,
        "DB_NAME": "mlflow",
        "INSTANCE_CONNECTION_NAME": "acme-ml:europe-west9:mlflow-db",
        "ARTIFACT_ROOT": "gs://acme-mlflow",
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def test_defaults_from_a_full_uri(monkeypatch):
    monkeypatch.setattr(env_mod, "available_cpus", lambda: 1)  # Cloud Run's default 1 vCPU
    s = settings_from_env(BASE)
    assert s.db_uri == "postgresql+psycopg2://u:hunter2@db.internal:5432/mlflow"
    assert (s.port, s.host, s.workers, s.artifact_mode, s.migrate, s.log_format) == (
        8080, "0.0.0.0", 1, "proxied", "auto", "json",
    )
    assert s.allowed_hosts == ()
    # One instance alone on a db-f1-micro: 20 connections for 1 worker.
    assert s.pool == budget.pool_for(20, 1)


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 2), (4, 4), (64, env_mod.MAX_DEFAULT_WORKERS)])
def test_workers_default_to_one_per_cpu_up_to_a_cap(monkeypatch, cpus, workers):
    monkeypatch.setattr(env_mod, "available_cpus", lambda: cpus)
    s = settings_from_env(BASE)
    assert s.workers == workers and s.pool == budget.pool_for(20, workers)
    assert settings_from_env({**BASE, "WORKERS": "1"}).workers == 1


def test_available_cpus_is_at_least_one_and_at_most_the_affinity():
    assert 1 <= env_mod.available_cpus() <= len(os.sched_getaffinity(0))


def test_unix_socket_uri_from_parts_quotes_the_password():
    s = settings_from_env(parts())
    assert s.db_uri == (
        "postgresql+psycopg2://mlflow:s3cr%3At%40%2Fp%20w%25@/mlflow"
        "?host=/cloudsql/acme-ml:europe-west9:mlflow-db"
    )
    assert SECRET not in s.safe_db_uri and "s3cr" not in s.safe_db_uri


def test_psycopg2_parses_the_quoted_password_back():
    from sqlalchemy.engine import make_url

    url = make_url(settings_from_env(parts()).db_uri)
    assert url.password == SECRET
    assert url.query["host"] == "/cloudsql/acme-ml:europe-west9:mlflow-db"
    assert url.drivername == "postgresql+psycopg2"


def test_tcp_uri_from_parts():
    s = settings_from_env(parts(INSTANCE_CONNECTION_NAME=None, DB_HOST="10.1.2.3", DB_PORT="6432"))
    assert s.db_uri.endswith("@10.1.2.3:6432/mlflow")


@pytest.mark.parametrize("uri", ["postgresql://a@h/db", "postgres://a@h/db"])
def test_plain_postgresql_is_pinned_to_psycopg2(uri):
    assert normalize_db_uri(uri) == "postgresql+psycopg2://a@h/db"
    assert settings_from_env({**BASE, "DB_URI": uri}).db_uri.startswith("postgresql+psycopg2://")


def test_sqlite_has_no_pool():
    s = settings_from_env({"DB_URI": "sqlite:////data/mlflow.db", "ARTIFACT_ROOT": "/data/artifacts"})
    assert s.db_kind == "sqlite" and s.pool is None


def test_pool_from_budget_and_explicit():
    assert settings_from_env({**BASE, "DB_CONNECTIONS": "4", "WORKERS": "2"}).pool == budget.Pool(2, 0)
    assert settings_from_env({**BASE, "DB_CONNECTIONS": "9", "WORKERS": "2"}).pool == budget.pool_for(9, 2)
    explicit = settings_from_env({**BASE, "DB_POOL_SIZE": "3", "DB_MAX_OVERFLOW": "0"})
    assert explicit.pool == budget.Pool(3, 0)


def test_allowed_hosts_are_split_and_deduplicated():
    s = settings_from_env({**BASE, "ALLOWED_HOSTS": " mlflow-abc-ew.a.run.app, *.run.app ,*.run.app"})
    assert s.allowed_hosts == ("mlflow-abc-ew.a.run.app", "*.run.app")


def test_migration_job_needs_no_artifact_root():
    env = {"DB_URI": BASE["DB_URI"]}
    with pytest.raises(ServerEnvError, match="^ARTIFACT_ROOT: not set"):
        settings_from_env(env)
    assert settings_from_env(env, serving=False).artifact_root == ""


# (variables, name of the variable the single error line must start with)
BAD = [
    ({"ARTIFACT_ROOT": "gs://b"}, "DB_URI"),
    ({**BASE, "DB_URI": "mysql://u:hunter2@h/db"}, "DB_URI"),
    ({**BASE, "DB_URI": "postgresql://u:hunter2@h:5432/"}, "DB_URI"),
    ({**BASE, "DB_URI": "not a uri hunter2"}, "DB_URI"),
    ({**BASE, "DB_URI": "sqlite:///relative.db"}, "DB_URI"),
    ({"DB_URI": BASE["DB_URI"]}, "ARTIFACT_ROOT"),
    ({**BASE, "ARTIFACT_ROOT": "relative/dir"}, "ARTIFACT_ROOT"),
    ({**BASE, "ARTIFACT_ROOT": "gs://UPPER"}, "ARTIFACT_ROOT"),
    ({**BASE, "ARTIFACT_ROOT": "s3://bucket"}, "ARTIFACT_ROOT"),
    ({**BASE, "ARTIFACT_MODE": "mirrored"}, "ARTIFACT_MODE"),
    ({**BASE, "PORT": "80a"}, "PORT"),
    ({**BASE, "PORT": "70000"}, "PORT"),
    ({**BASE, "HOST": "0.0.0.0; rm"}, "HOST"),
    ({**BASE, "WORKERS": "0"}, "WORKERS"),
    ({**BASE, "WORKERS": "two"}, "WORKERS"),
    ({**BASE, "ALLOWED_HOSTS": "https://x.run.app"}, "ALLOWED_HOSTS"),
    ({**BASE, "ALLOWED_HOSTS": "a b"}, "ALLOWED_HOSTS"),
    ({**BASE, "DB_CONNECTIONS": "0"}, "DB_CONNECTIONS"),
    ({**BASE, "DB_CONNECTIONS": "1", "WORKERS": "2"}, "DB_CONNECTIONS"),
    ({**BASE, "DB_CONNECTIONS": "3", "WORKERS": "2"}, "DB_CONNECTIONS"),
    ({**BASE, "DB_POOL_SIZE": "1", "DB_MAX_OVERFLOW": "0"}, "DB_POOL_SIZE"),
    ({**BASE, "DB_POOL_SIZE": "0"}, "DB_POOL_SIZE"),
    ({**BASE, "DB_MAX_OVERFLOW": "2"}, "DB_POOL_SIZE"),
    ({**BASE, "DB_MAX_OVERFLOW": "-1", "DB_POOL_SIZE": "1"}, "DB_MAX_OVERFLOW"),
    ({**BASE, "DB_MIGRATE": "always"}, "DB_MIGRATE"),
    ({**BASE, "DB_WAIT_SECONDS": "soon"}, "DB_WAIT_SECONDS"),
    ({**BASE, "DB_WAIT_SECONDS": "-3"}, "DB_WAIT_SECONDS"),
    ({**BASE, "LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    (parts(DB_USER=None), "DB_USER"),
    (parts(DB_PASSWORD=None), "DB_PASSWORD"),
    (parts(DB_NAME=None), "DB_NAME"),
    (parts(INSTANCE_CONNECTION_NAME=None), "INSTANCE_CONNECTION_NAME"),
    (parts(INSTANCE_CONNECTION_NAME="mlflow-db"), "INSTANCE_CONNECTION_NAME"),
    (parts(INSTANCE_CONNECTION_NAME=None, DB_HOST="db/host"), "DB_HOST"),
    (parts(INSTANCE_CONNECTION_NAME=None, DB_HOST="h", DB_PORT="0"), "DB_PORT"),
]


@pytest.mark.parametrize(("env", "name"), BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_each_bad_variable_is_one_line_naming_it(env, name):
    with pytest.raises(ServerEnvError) as excinfo:
        settings_from_env(env)
    message = str(excinfo.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message
    assert SECRET not in message and "hunter2" not in message
    assert name in VARIABLES


def test_blank_values_count_as_unset():
    # Cloud Run can set a variable to "", which must not pass as a value.
    with pytest.raises(ServerEnvError, match="^ARTIFACT_ROOT"):
        settings_from_env({"DB_URI": BASE["DB_URI"], "ARTIFACT_ROOT": "  "})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql+psycopg2://u:p%40ss@h/db", "postgresql+psycopg2://u:***@h/db"),
        ("failed for postgresql://user:hunter2@10.0.0.1:5432/x today", "failed for postgresql://user:***@10.0.0.1:5432/x today"),
        ("postgresql://u@h/db?password=hunter2&x=1", "postgresql://u@h/db?password=***&x=1"),
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
        ("gs://bucket/a:b@c", "gs://bucket/a:b@c"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected
