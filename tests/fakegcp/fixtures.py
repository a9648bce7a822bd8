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
    MLFLOW_GCP_API_ROOT pointing at it for the duration of the test (MLFLOW_GCP_POLL_SECONDS=0:
    the fake's operations advance per poll, so waiting between polls only costs time)."""
    fake_gcp_server.reset()
    monkeypatch.setenv("MLFLOW_GCP_API_ROOT", fake_gcp_server.url)
    monkeypatch.setenv("MLFLOW_GCP_POLL_SECONDS", "0")
    yield fake_gcp_server
    errors = list(fake_gcp_server.internal_errors)
    fake_gcp_server.reset()
    assert not errors, "the fake itself failed (a bug in tests/fakegcp):\n" + errors[0]


@pytest.fixture(scope="session")
def _fake_gcp_clients(fake_gcp_server):
    # Building a client parses its discovery document (up to a few hundred kB): once per session.
    return {}


@pytest.fixture
def gcp_client(fake_gcp, _fake_gcp_clients):
    """gcp_client(api, version) -> a googleapiclient Resource talking to the fake."""

    def build(api: str, version: str):
        key = (api, version)
        if key not in _fake_gcp_clients:
            _fake_gcp_clients[key] = build_client(fake_gcp.url, api, version)
        return _fake_gcp_clients[key]

    return build
