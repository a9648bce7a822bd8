"""The health check `up` ends with: an ID token from the client plugin's sources, /health and an
MLflow API call through a Cloud Run front stand-in to a real MLflow server."""

from __future__ import annotations

from mlflow_gcp.ops import health


def test_healthy_with_an_invoker_token(plugin, stack):
    result = health.check(stack.front.url, emulated=False)
    assert result.ok is True, result.message


def test_an_identity_without_invoker_rights_fails_the_check(plugin, stack, monkeypatch):
    monkeypatch.setenv("MLFLOW_GCP_CREDENTIALS_FILE", str(stack.outsider_key_file))
    result = health.check(stack.front.url, emulated=False)
    assert result.ok is False and "403" in result.message


def test_no_token_means_skipped_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_GCP_CREDENTIALS_FILE", str(tmp_path / "missing.json"))
    result = health.check("https://mlflow-tracking-1.europe-west9.run.app", emulated=False)
    assert result.ok is None
    assert result.message.startswith("health check skipped: no ID token could be minted")
    assert "missing.json" in result.message
