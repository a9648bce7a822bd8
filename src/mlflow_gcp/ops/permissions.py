"""Who may do what inside MLflow: grants on experiments and registered models, through MLflow's
own permission REST API as an admin (so the CLI and MLflow's API show the same data).

`access grant/revoke/list --experiment NAME | --model NAME` (cli/access_cmds.py) land here; the
caller must be listed in access.admins (MLflow admins). Members are `user:EMAIL` or
`serviceAccount:EMAIL`: MLflow users are single Google identities (groups and domains have no
MLflow user to hold a grant). A member who never called the server yet is created as an MLflow
user first, as the server would on their first request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from mlflow_gcp.errors import ConfigError, MlflowGcpError, NotFound

# What MLflow 3.17 accepts in a grant (NO_PERMISSIONS is only a default; DENY refuses explicitly).
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "DENY")
_MEMBER_KINDS = ("user", "serviceAccount")
USERS = "/api/2.0/mlflow/users"
GRANTS = "/api/3.0/mlflow/users/permissions"
ADMIN_HINT = "only admins (access.admins in mlflow-gcp.toml, deployed with `mlflow-gcp up`) may change permissions"


class MlflowApiError(MlflowGcpError):
    def __init__(self, message: str, *, hint: str | None = None, error_code: str | None = None):
        super().__init__(message, hint=hint)
        self.error_code = error_code


@dataclass(frozen=True)
class Resource:
    kind: str  # "experiment" | "registered_model"
    name: str
    id: str

    @property
    def label(self) -> str:
        return f"{'experiment' if self.kind == 'experiment' else 'model'} {self.name}"


@dataclass(frozen=True)
class Row:
    member: str
    permission: str
    source: str  # "grant", "default" or "admin"


def username(member: str) -> str:
    kind, _, email = member.partition(":")
    if kind not in _MEMBER_KINDS or "@" not in email:
        raise ConfigError([(member, "MLflow permissions take user:EMAIL or serviceAccount:EMAIL "
                                    "(groups and domains are not MLflow users)")])
    return email.strip().lower()


def check_permission(permission: str) -> str:
    value = permission.strip().upper()
    if value not in PERMISSIONS:
        raise ConfigError([("--permission", f"{permission!r} is not one of {', '.join(PERMISSIONS)}")])
    return value


class Api:
    """MLflow's REST API at `url`, authenticated by the gcp plugin (a requests session)."""

    def __init__(self, url: str, session=None):
        import requests

        from mlflow_gcp.client.auth import GcpAuth

        self.url = url.rstrip("/")
        if session is None:
            session = requests.Session()
            session.auth = GcpAuth()
        self.session = session

    def call(self, method: str, path: str, **kwargs) -> dict:
        resp = self.session.request(method, self.url + path, timeout=60, **kwargs)
        if resp.status_code == 200:
            return resp.json() if resp.content else {}
        try:
            doc = resp.json()
        except ValueError:
            doc = {"message": resp.text.strip()[:300]}
        message = doc.get("message") or resp.reason
        if resp.status_code == 403:
            raise MlflowApiError(f"MLflow refused: {message}", hint=ADMIN_HINT)
        if doc.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
            raise NotFound(message)
        raise MlflowApiError(f"MLflow answered {resp.status_code}: {message}",
                             error_code=doc.get("error_code"))


def resolve(api: Api, experiment: str | None, model: str | None) -> Resource:
    if bool(experiment) == bool(model):
        raise ConfigError([("--experiment/--model", "give exactly one")])
    if experiment:
        try:
            doc = api.call("GET", "/api/2.0/mlflow/experiments/get-by-name",
                           params={"experiment_name": experiment})
        except NotFound as err:
            raise NotFound(f"no experiment named {experiment!r}") from err
        return Resource("experiment", experiment, doc["experiment"]["experiment_id"])
    try:
        api.call("GET", "/api/2.0/mlflow/registered-models/get", params={"name": model})
    except NotFound as err:
        raise NotFound(f"no registered model named {model!r}") from err
    return Resource("registered_model", model, model)


def _ensure_user(api: Api, name: str) -> None:
    try:
        api.call("GET", f"{USERS}/get", params={"username": name})
    except NotFound:
        # A password nobody knows: identities come from Google ID tokens, never passwords.
        api.call("POST", f"{USERS}/create", json={"username": name, "password": secrets.token_urlsafe(24)})


def _body(name: str, resource: Resource, **extra) -> dict:
    return {"username": name, "resource_type": resource.kind, "resource_id": resource.id, **extra}


def grant(api: Api, member: str, resource: Resource, permission: str) -> str:
    name, permission = username(member), check_permission(permission)
    _ensure_user(api, name)
    try:
        api.call("POST", f"{GRANTS}/grant", json=_body(name, resource, permission=permission))
    except MlflowApiError as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        # MLflow keeps one grant per user and resource: replace it.
        api.call("POST", f"{GRANTS}/revoke", json=_body(name, resource))
        api.call("POST", f"{GRANTS}/grant", json=_body(name, resource, permission=permission))
    return f"grant {permission} on {resource.label} to {member}"


def revoke(api: Api, member: str, resource: Resource) -> str:
    name = username(member)
    try:
        api.call("POST", f"{GRANTS}/revoke", json=_body(name, resource))
    except NotFound:
        return f"{member} has no grant on {resource.label}"
    return f"revoke grant on {resource.label} from {member}"


def list_grants(api: Api, resource: Resource) -> list[Row]:
    """Every MLflow user's effective permission on `resource`, and where it comes from."""
    rows = []
    for user in api.call("GET", f"{USERS}/list").get("users", []):
        name = user["username"]
        if "@" not in name:
            continue  # MLflow's bootstrap admin account, not a Google identity
        member = ("serviceAccount:" if name.endswith(".gserviceaccount.com") else "user:") + name
        if user.get("is_admin"):
            rows.append(Row(member, "MANAGE", "admin"))
            continue
        explicit = api.call("GET", f"{GRANTS}/list", params={"username": name}).get("permissions", [])
        granted = [p["permission"] for p in explicit
                   if p.get("resource_type") == resource.kind and p.get("resource_pattern") == resource.id]
        if granted:
            rows.append(Row(member, granted[0], "grant"))
            continue
        got = api.call("GET", f"{GRANTS}/get", params=_body(name, resource))
        rows.append(Row(member, got.get("permission", "?"), "default"))
    return rows
