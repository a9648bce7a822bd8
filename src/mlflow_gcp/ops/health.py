"""After `up`: call the server with a Google ID token, the way the client plugin will."""

from __future__ import annotations

from dataclasses import dataclass

# Cold start (scale from zero, Cloud SQL connection, schema check) takes up to ~30 s.
HEALTH_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Health:
    ok: bool | None  # None: skipped
    message: str


def check(url: str, *, emulated: bool, version: str | None = None) -> Health:
    """/health and an MLflow API call; with `version`, also MLflow's /version, which must name it
    (an image tagged with one MLflow that runs another once passed every other check)."""
    if emulated:
        return Health(None, "health check skipped: MLFLOW_GCP_API_ROOT points at an emulator")
    try:
        # The same token sources as the client plugin: what works here works for MLflow clients.
        from mlflow_gcp.client import tokens

        token = tokens.resolve_source().fetch(url).value
    except Exception as err:  # noqa: BLE001 - any failure to mint means "cannot check", not an error
        return Health(
            None,
            f"health check skipped: no ID token could be minted for {url} ({err.__class__.__name__}: "
            f"{getattr(err, 'message', None) or 'see --debug'}); `mlflow-gcp env` documents the token sources",
        )
    import requests

    from mlflow_gcp.client.auth import set_token

    headers: dict[str, str] = {}
    set_token(headers, token)  # both headers, as the plugin: the server verifies the token too
    try:
        health = requests.get(f"{url}/health", headers=headers, timeout=HEALTH_TIMEOUT_SECONDS)
        # /health skips MLflow's host check; an API call proves ALLOWED_HOSTS is right too.
        api = requests.get(
            f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
            headers=headers, timeout=HEALTH_TIMEOUT_SECONDS,
        )
        served = requests.get(f"{url}/version", headers=headers, timeout=HEALTH_TIMEOUT_SECONDS) if version else None
    except requests.RequestException as err:
        return Health(False, f"health check failed: {err.__class__.__name__}")
    if health.status_code != 200:
        return Health(False, f"health check failed: /health answered {health.status_code}")
    if api.status_code != 200:
        return Health(False, f"health check failed: the MLflow API answered {api.status_code}")
    if served is None:
        return Health(True, "healthy: /health and the MLflow API answer 200")
    if served.status_code != 200:
        return Health(False, f"health check failed: /version answered {served.status_code}")
    if served.text.strip() != version:
        return Health(False, f"health check failed: /version says MLflow {served.text.strip()[:40]!r}, not {version}")
    return Health(True, f"healthy: /health and the MLflow API answer 200, /version is {version}")
