"""The plugin's wiring into MLflow, its import weight, and what it does to a request."""

from __future__ import annotations

import subprocess
import time
import sys

import pytest
import requests

from mlflow_gcp.client import auth, tokens

HEAVY = ("googleapiclient", "click", "pydantic", "google.auth", "mlflow", "mlflow_gcp.gcp",
         "mlflow_gcp.ops", "mlflow_gcp.plan", "mlflow_gcp.cli")


def test_importing_the_plugin_is_light():
    script = (
        "import sys, mlflow_gcp.client.auth, mlflow_gcp.client.tokens; "
        "print('\\n'.join(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    heavy = [m for m in out if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []


def test_mlflow_finds_the_gcp_provider_through_its_entry_point():
    from mlflow.tracking.request_auth.registry import fetch_auth

    assert isinstance(fetch_auth("gcp"), auth.GcpAuth)


def test_missing_google_auth_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.auth", None)  # as if not installed
    with pytest.raises(tokens.TokenError) as err:
        auth.GcpRequestAuthProvider().get_auth()
    assert str(err.value) == (
        "the gcp auth plugin needs google-auth (pip install google-auth (or pip install mlflow-gcp))"
    )
    with pytest.raises(tokens.TokenError, match="needs google-auth"):
        tokens._google_auth()


def test_audience_is_the_origin_unless_overridden(monkeypatch):
    monkeypatch.delenv(tokens.AUDIENCE_ENV, raising=False)
    url = "https://mlflow-tracking-123.europe-west9.run.app/api/2.0/mlflow/runs/get?run_id=1"
    assert auth.audience_for(url) == "https://mlflow-tracking-123.europe-west9.run.app"
    monkeypatch.setenv(tokens.AUDIENCE_ENV, "https://custom.example.com")
    assert auth.audience_for(url) == "https://custom.example.com"


class _NoSource:
    """A cache whose source must never be asked: the caller's header wins."""

    def fetch(self, audience: str):
        raise AssertionError("a token was fetched although the caller set Authorization")


def test_the_callers_authorization_header_is_left_alone():
    cache = tokens.TokenCache(_NoSource)
    request = requests.Request(
        "GET", "https://x.run.app/api/2.0/mlflow/experiments/search",
        headers={"Authorization": "Basic dXNlcjpwYXNz"},
    ).prepare()
    out = auth.GcpAuth(cache)(request)
    assert out.headers["Authorization"] == "Basic dXNlcjpwYXNz"
    assert out.hooks["response"] == []  # and no retry hook that could replace it
    assert cache.fetches == 0


class _OneToken:
    def fetch(self, audience: str):
        return tokens.Token(value=f"id-token-for-{audience}", expiry=time.time() + 3600, source="test")


def test_the_token_goes_in_both_headers_cloud_run_reads():
    """Cloud Run checks X-Serverless-Authorization and strips that token's signature; the
    Authorization copy reaches the server intact, for it to verify (server/identity.py)."""
    request = requests.Request("POST", "https://x.run.app/api/2.0/mlflow/runs/create").prepare()
    out = auth.GcpAuth(tokens.TokenCache(_OneToken))(request)
    assert out.headers["Authorization"] == "Bearer id-token-for-https://x.run.app"
    assert out.headers["X-Serverless-Authorization"] == out.headers["Authorization"]
