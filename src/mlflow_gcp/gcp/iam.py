"""IAM service accounts and their own IAM policies."""

from __future__ import annotations

from mlflow_gcp.errors import AlreadyExists, NotFound
from mlflow_gcp.gcp import operations


def _name(clients, email: str) -> str:
    return f"projects/{clients.project}/serviceAccounts/{email}"


def get_service_account(clients, email: str) -> dict | None:
    api = clients.api("iam").projects().serviceAccounts()
    return operations.read(clients, api.get(name=_name(clients, email)), f"reading service account {email}")


def create_service_account(clients, account_id: str, display_name: str, description: str) -> dict | None:
    """Create it; None when it already exists (another run made it)."""
    api = clients.api("iam").projects().serviceAccounts()
    body = {"accountId": account_id, "serviceAccount": {"displayName": display_name, "description": description}}
    try:
        created = clients.execute(
            api.create(name=f"projects/{clients.project}", body=body), f"creating service account {account_id}"
        )
    except AlreadyExists:
        return None
    # Other APIs may not know it for a minute or more: their refusals are waited out (clients.classify).
    clients.known_accounts.add(created.get("email") or f"{account_id}@{clients.project}.iam.gserviceaccount.com")
    return created


def delete_service_account(clients, email: str) -> bool:
    api = clients.api("iam").projects().serviceAccounts()
    try:
        clients.execute(api.delete(name=_name(clients, email)), f"deleting service account {email}")
        return True
    except NotFound:
        return False


def list_service_accounts(clients) -> list[dict]:
    api = clients.api("iam").projects().serviceAccounts()
    out, token = [], None
    while True:
        resp = clients.execute(api.list(name=f"projects/{clients.project}", pageSize=100, pageToken=token),
                               "listing service accounts")
        out += resp.get("accounts") or []
        token = resp.get("nextPageToken")
        if not token:
            return out


def user_managed_keys(clients, email: str) -> list[dict]:
    """The account's user-managed keys (key files someone downloaded; Google's own are left out)."""
    api = clients.api("iam").projects().serviceAccounts().keys()
    resp = clients.execute(api.list(name=_name(clients, email), keyTypes="USER_MANAGED"),
                           f"listing the keys of {email}")
    return resp.get("keys") or []


def get_iam_policy(clients, email: str) -> dict:
    api = clients.api("iam").projects().serviceAccounts()
    return clients.execute(
        api.getIamPolicy(resource=_name(clients, email)), f"reading the IAM policy of {email}"
    )


def set_iam_policy(clients, email: str, policy: dict) -> dict:
    api = clients.api("iam").projects().serviceAccounts()
    return clients.execute(
        api.setIamPolicy(resource=_name(clients, email), body={"policy": policy}),
        f"updating the IAM policy of {email}",
    )


def create_key(clients, email: str) -> dict:
    """A new user-managed key; the response's privateKeyData is the key file, base64 (keep it secret)."""
    api = clients.api("iam").projects().serviceAccounts().keys()
    return clients.execute(
        api.create(name=_name(clients, email), body={"privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE"}),
        f"creating a key for {email}",
    )
