"""pytest fixtures: one fake server per session, fresh state for every test.

Enable with `pytest_plugins = ["tests.fakegcp.fixtures"]` in a conftest, or import the fixtures.
"""

from __future__ import annotations

import pytest

from .client import build_client
from .server import FakeGcp


@pytest.fixture(scope="session")
def fake_gcp_server():
    fake = FakeGcp().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_gcp(fake_gcp_server, monkeypatch):
    """The running fake with empty state, no faults, an empty request log, and
    MLFLOW_GCP_API_ROOT pointing at it for the duration of the test."""
    fake_gcp_server.reset()
    monkeypatch.setenv("MLFLOW_GCP_API_ROOT", fake_gcp_server.url)
    yield fake_gcp_server
    fake_gcp_server.reset()


@pytest.fixture
def gcp_client(fake_gcp):
    """build(api, version) -> a googleapiclient Resource talking to the fake."""

    def build(api: str, version: str):
        return build_client(fake_gcp.url, api, version)

    return build
