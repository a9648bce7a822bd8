"""Secret Manager: the database password's secret, its versions and its IAM policy.

Payloads never reach a log line or an error message: only the secret's name does.
"""

from __future__ import annotations

import base64

from mlflow_gcp.errors import AlreadyExists, NotFound
from mlflow_gcp.gcp import operations


def secret_name(clients, secret_id: str) -> str:
    return f"projects/{clients.project}/secrets/{secret_id}"


def _api(clients):
    return clients.api("secretmanager").projects().secrets()


def get_secret(clients, secret_id: str) -> dict | None:
    return operations.read(clients, _api(clients).get(name=secret_name(clients, secret_id)), f"reading secret {secret_id}")


def create_secret(clients, secret_id: str, labels: dict) -> dict | None:
    body = {"replication": {"automatic": {}}, "labels": labels}
    try:
        return clients.execute(
            _api(clients).create(parent=f"projects/{clients.project}", secretId=secret_id, body=body),
            f"creating secret {secret_id}",
        )
    except AlreadyExists:
        return None


def patch_labels(clients, secret_id: str, labels: dict) -> dict:
    return clients.execute(
        _api(clients).patch(name=secret_name(clients, secret_id), updateMask="labels", body={"labels": labels}),
        f"updating labels of secret {secret_id}",
    )


def has_enabled_version(clients, secret_id: str) -> bool:
    resp = clients.execute(
        _api(clients).versions().list(parent=secret_name(clients, secret_id), filter="state:ENABLED"),
        f"listing versions of secret {secret_id}",
    )
    return any(v.get("state", "ENABLED") == "ENABLED" for v in resp.get("versions") or [])


def add_version(clients, secret_id: str, value: str) -> None:
    data = base64.b64encode(value.encode()).decode()
    clients.execute(
        _api(clients).addVersion(parent=secret_name(clients, secret_id), body={"payload": {"data": data}}),
        f"storing a new version of secret {secret_id}",
    )


def access_latest(clients, secret_id: str) -> str:
    resp = clients.execute(
        _api(clients).versions().access(name=f"{secret_name(clients, secret_id)}/versions/latest"),
        f"reading secret {secret_id}",
    )
    return base64.b64decode(resp["payload"]["data"]).decode()


def delete_secret(clients, secret_id: str) -> bool:
    try:
        clients.execute(_api(clients).delete(name=secret_name(clients, secret_id)), f"deleting secret {secret_id}")
        return True
    except NotFound:
        return False


def get_iam_policy(clients, secret_id: str) -> dict:
    return clients.execute(
        _api(clients).getIamPolicy(resource=secret_name(clients, secret_id)),
        f"reading the IAM policy of secret {secret_id}",
    )


def set_iam_policy(clients, secret_id: str, policy: dict) -> dict:
    return clients.execute(
        _api(clients).setIamPolicy(resource=secret_name(clients, secret_id), body={"policy": policy}),
        f"updating the IAM policy of secret {secret_id}",
    )


def patch_annotations(clients, secret_id: str, annotations: dict) -> dict:
    return clients.execute(
        _api(clients).patch(
            name=secret_name(clients, secret_id), updateMask="annotations", body={"annotations": annotations}
        ),
        f"updating annotations of secret {secret_id}",
    )
