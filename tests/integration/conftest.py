"""Fixtures for the client tests: a real MLflow server behind a Cloud Run front stand-in.

The MLflow server is the expensive part (seconds to start, hundreds of MB): one per session.
The identity provider, its clock and the front are cheap, so each test gets its own and may move
its clock without disturbing the others.
"""

from __future__ import annotations

import os

import pytest

from mlflow_gcp.client import tokens

from tests.support.clock import FakeClock
from tests.support.cloudrun_front import CloudRunFront
from tests.support.idp import LocalIdentityProvider
from tests.support.mlflow_server import MlflowServer

FRONT_HOST = "mlflow-tracking-7x2kq9ab3c-ew.a.run.app"
INVOKER = "ci-runner@test-project.iam.gserviceaccount.com"
OUTSIDER = "intruder@test-project.iam.gserviceaccount.com"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), allowed_hosts=[FRONT_HOST])
    server.start()
    yield server
    server.stop()


class Stack:
    """One test's identity provider, clock, front and key files, on the shared MLflow server."""

    def __init__(self, server: MlflowServer, tmp_path):
        self.server = server
        self.clock = FakeClock()
        self.idp = LocalIdentityProvider(clock=self.clock).start()
        self.front = CloudRunFront(
            server.url, certs=self.idp.certs, host=FRONT_HOST, clock=self.clock,
            allowed_invokers=[f"serviceAccount:{INVOKER}", f"serviceAccount:{self.idp.metadata_email}"],
        ).start()
        self.key_file = self.idp.write_key_file(tmp_path / "invoker-key.json", INVOKER)
        self.outsider_key_file = self.idp.write_key_file(tmp_path / "outsider-key.json", OUTSIDER)

    def close(self) -> None:
        self.front.close()
        self.idp.close()


@pytest.fixture
def stack(mlflow_server, tmp_path):
    s = Stack(mlflow_server, tmp_path)
    yield s
    s.close()


@pytest.fixture
def plugin(monkeypatch, stack):
    """The plugin in this process (MLFLOW_TRACKING_AUTH=gcp, the invoker's key file), on a cache
    whose clock is the stack's; returns that cache."""
    for var in list(os.environ):
        if var.startswith(("MLFLOW_GCP_", "MLFLOW_TRACKING_")) or var == "GOOGLE_APPLICATION_CREDENTIALS":
            monkeypatch.delenv(var)
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "gcp")
    monkeypatch.setenv("MLFLOW_GCP_CREDENTIALS_FILE", str(stack.key_file))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cache = tokens.TokenCache(clock=stack.clock)
    monkeypatch.setattr(tokens, "_default_cache", cache)
    return cache
