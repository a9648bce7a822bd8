"""pytest fixtures: one fake server per test process, fresh state for every test.

Enable with `pytest_plugins = ["tests.fakegcp.fixtures"]` in a conftest, or import the fixtures
into a test module (`from tests.fakegcp.fixtures import fake_gcp, fake_gcp_server, ...`).
"""

from __future__ import annotations

import atexit

import pytest

from .client import build_client
from .server import FakeGcp

# Modules that import these fixtures each get their own fixture definitions, so a plain
# session-scoped fixture would start one server per module: share one per process instead.
_SHARED: dict = {}


def shared_fake() -> FakeGcp:
    if "fake" not in _SHARED:
        _SHARED["fake"] = FakeGcp().start()
        _SHARED["clients"] = {}
        atexit.register(_SHARED["fake"].stop)
    return _SHARED["fake"]


@pytest.fixture(scope="session")
def fake_gcp_server():
    return shared_fake()


@pytest.fixture
def fake_gcp(fake_gcp_server, monkeypatch):
    """The running fake with empty state, no faults, an empty request log, Google's timing on
    (operation durations, propagation delays: core/timing.py), and MLFLOW_GCP_API_ROOT pointing
    at it for the duration of the test (MLFLOW_GCP_EMULATOR_CLOCK=1: the tool waits by advancing
    the fake's clock, so minutes of Google time cost no real time)."""
    fake_gcp_server.reset()
    monkeypatch.setenv("MLFLOW_GCP_API_ROOT", fake_gcp_server.url)
    monkeypatch.setenv("MLFLOW_GCP_EMULATOR_CLOCK", "1")
    yield fake_gcp_server
    errors = list(fake_gcp_server.internal_errors)
    fake_gcp_server.reset()
    assert not errors, "the fake itself failed (a bug in tests/fakegcp):\n" + errors[0]


@pytest.fixture(scope="session")
def _fake_gcp_clients(fake_gcp_server):
    # Building a client parses its discovery document (up to a few hundred kB): once per process.
    return _SHARED["clients"]


@pytest.fixture
def gcp_client(fake_gcp, _fake_gcp_clients):
    """gcp_client(api, version) -> a googleapiclient Resource talking to the fake."""

    def build(api: str, version: str):
        key = (api, version)
        if key not in _fake_gcp_clients:
            _fake_gcp_clients[key] = build_client(fake_gcp.url, api, version)
        return _fake_gcp_clients[key]

    return build
