"""Secret Manager versions for password rotation: add (returning the version), list, disable.

Payloads never reach a log line or an error message: only version names do.
"""

from __future__ import annotations

import base64

from mlflow_gcp.gcp import secretmanager


def _versions(clients):
    return clients.api("secretmanager").projects().secrets().versions()


def add(clients, secret_id: str, value: str) -> str:
    """Store `value` as a new version; its number (e.g. "3")."""
    data = base64.b64encode(value.encode()).decode()
    resp = clients.execute(
        clients.api("secretmanager").projects().secrets().addVersion(
            parent=secretmanager.secret_name(clients, secret_id), body={"payload": {"data": data}}),
        f"storing a new version of secret {secret_id}",
    )
    return resp["name"].rsplit("/", 1)[-1]


def enabled(clients, secret_id: str) -> list[str]:
    """Numbers of the ENABLED versions."""
    resp = clients.execute(
        _versions(clients).list(parent=secretmanager.secret_name(clients, secret_id)),
        f"listing versions of secret {secret_id}",
    )
    return [v["name"].rsplit("/", 1)[-1] for v in resp.get("versions") or [] if v.get("state") == "ENABLED"]


def disable(clients, secret_id: str, version: str) -> None:
    clients.execute(
        _versions(clients).disable(name=f"{secretmanager.secret_name(clients, secret_id)}/versions/{version}",
                                   body={}),
        f"disabling version {version} of secret {secret_id}",
    )


def destroy(clients, secret_id: str, version: str) -> None:
    clients.execute(
        _versions(clients).destroy(name=f"{secretmanager.secret_name(clients, secret_id)}/versions/{version}",
                                   body={}),
        f"destroying version {version} of secret {secret_id}",
    )
