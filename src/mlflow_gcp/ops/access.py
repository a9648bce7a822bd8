"""Who may use the server: invoker on the Cloud Run service (plus object access on the bucket
when artifacts.mode is direct), and service accounts for jobs.

Every change is read, compare, write-only-if-changed (`iampolicy.ensure`), so granting twice
writes once. `up` leaves members granted here alone (plan/invokers.py keeps its own record).
allUsers / allAuthenticatedUsers are never granted: a public server is access.mode = "public",
which turns Cloud Run's invoker check off (invokerIamDisabled) and works under domain-restricted
sharing, where Google refuses those members in any IAM policy.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_gcp.config import PUBLIC_MEMBERS, Config
from mlflow_gcp.errors import ConfigError, GcpError, NotFound, OrgPolicyDenied
from mlflow_gcp.gcp import iam, iampolicy, run, storage
from mlflow_gcp.plan import invokers

INVOKER_ROLE = "roles/run.invoker"
# Read and write objects (no bucket admin): what a client needs when it writes artifacts itself.
BUCKET_ROLE = "roles/storage.objectUser"
# Includes iam.serviceAccounts.getOpenIdToken: lets a member mint ID tokens as the account.
TOKEN_CREATOR_ROLE = "roles/iam.serviceAccountTokenCreator"
_MEMBER_RE = re.compile(r"^(user|group|serviceAccount|domain):[^\s:]+$")
# Service account ids, as IAM takes them.
_SA_ID_RE = re.compile(r"^[a-z]([a-z0-9-]{4,28}[a-z0-9])$")
PUBLIC_REFUSAL = ('is not granted: a public server is access.mode = "public" and `mlflow-gcp up '
                  '--allow-public` (Cloud Run\'s invoker check off, which domain-restricted sharing allows)')


@dataclass
class Change:
    verb: str  # "grant", "revoke" or "create"
    role: str
    member: str
    resource: str

    def line(self) -> str:
        if self.verb == "create":
            return f"create {self.role} {self.member} in {self.resource}"
        to = "to" if self.verb == "grant" else "from"
        return f"{self.verb} {self.role} {to} {self.member} on {self.resource}"


@dataclass
class Result:
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_members(cfg: Config, members: list[str]) -> list[str]:
    """Valid members, or a ConfigError naming each bad one (public members included)."""
    problems, warnings = [], []
    for m in members:
        if m in PUBLIC_MEMBERS:
            problems.append((m, PUBLIC_REFUSAL))
        elif not _MEMBER_RE.match(m):
            problems.append((m, "expected user:EMAIL, group:EMAIL, serviceAccount:EMAIL or domain:DOMAIN"))
    if problems:
        raise ConfigError(problems)
    if not members:
        raise ConfigError([("members", "name at least one member")])
    return warnings


def _service_resource(cfg: Config) -> str:
    return f"service {cfg.service.name}"


def _ensure_service(clients, cfg: Config, add=(), remove=()) -> list[Change]:
    try:
        done = iampolicy.ensure(
            lambda: run.get_service_iam_policy(clients, cfg.region, cfg.service.name),
            lambda p: run.set_service_iam_policy(clients, cfg.region, cfg.service.name, p),
            add, remove,
        )
    except NotFound as err:
        raise NotFound(
            f"Cloud Run service {cfg.service.name} is not deployed in project {cfg.project}, "
            f"region {cfg.region}", hint="run `mlflow-gcp up` first",
        ) from err
    return [Change("grant" if v == "add" else "revoke", r, m, _service_resource(cfg))
            for v, (r, m) in done]


def _ensure_bucket(clients, cfg: Config, add=(), remove=()) -> list[Change]:
    done = iampolicy.ensure(
        lambda: storage.get_iam_policy(clients, cfg.bucket_name),
        lambda p: storage.set_iam_policy(clients, cfg.bucket_name, p),
        add, remove,
    )
    return [Change("grant" if v == "add" else "revoke", r, m, f"bucket {cfg.bucket_name}")
            for v, (r, m) in done]


def _direct(cfg: Config) -> bool:
    return cfg.artifacts.mode == "direct"


def grant(clients, cfg: Config, members: list[str]) -> Result:
    result = Result(warnings=check_members(cfg, members))
    # Before the grant: a member `up` once granted from the config is now granted by hand, and
    # `up` must not revoke it when it is no longer in access.members.
    invokers.release(clients, cfg, members)
    result.changes += _ensure_service(clients, cfg, add=[(INVOKER_ROLE, m) for m in members])
    if _direct(cfg):
        result.changes += _ensure_bucket(clients, cfg, add=[(BUCKET_ROLE, m) for m in members])
    return result


def revoke(clients, cfg: Config, members: list[str]) -> Result:
    for m in members:  # revoking a public member is always allowed: it makes things safer
        if m not in PUBLIC_MEMBERS and not _MEMBER_RE.match(m):
            raise ConfigError([(m, "expected user:EMAIL, group:EMAIL, serviceAccount:EMAIL or domain:DOMAIN")])
    result = Result()
    result.changes += _ensure_service(clients, cfg, remove=[(INVOKER_ROLE, m) for m in members])
    if _direct(cfg):
        result.changes += _ensure_bucket(clients, cfg, remove=[(BUCKET_ROLE, m) for m in members])
    for m in members:
        if m in cfg.access.members:
            result.warnings.append(
                f"{m} is in access.members of the config: remove it there too, or the next "
                "`mlflow-gcp up` grants it again"
            )
    return result


def list_access(clients, cfg: Config) -> list[dict]:
    """Who may invoke the service (and use the bucket when direct), one row per member and role."""
    try:
        policy = run.get_service_iam_policy(clients, cfg.region, cfg.service.name)
    except NotFound as err:
        raise NotFound(f"Cloud Run service {cfg.service.name} is not deployed",
                       hint="run `mlflow-gcp up` first") from err
    rows = []
    if (run.get_service_raw(clients, cfg.region, cfg.service.name) or {}).get("invokerIamDisabled"):
        rows.append({"member": "anyone (public)", "role": "invoker check off (invokerIamDisabled)",
                     "resource": _service_resource(cfg)})
    rows += [{"member": m, "role": INVOKER_ROLE, "resource": _service_resource(cfg)}
             for m in sorted(iampolicy.members_of(policy, INVOKER_ROLE))]
    if _direct(cfg):
        bucket = storage.get_iam_policy(clients, cfg.bucket_name)
        rows += [{"member": m, "role": BUCKET_ROLE, "resource": f"bucket {cfg.bucket_name}"}
                 for m in sorted(iampolicy.members_of(bucket, BUCKET_ROLE))]
    return rows


def service_account_email(cfg: Config, name: str) -> str:
    if not _SA_ID_RE.match(name):
        raise ConfigError([("name", "service account ids are 6-30 lowercase letters, digits or "
                                    "hyphens, starting with a letter")])
    return f"{name}@{cfg.project}.iam.gserviceaccount.com"


def create_service_account(clients, cfg: Config, name: str, *, impersonators: list[str] = (),
                           key_file: str | os.PathLike | None = None) -> Result:
    """A service account for jobs that use the server: invoker (and bucket access when direct).

    Keyless unless `key_file` is given: `impersonators` get Token Creator on the account, so
    their own credentials can mint its tokens (MLFLOW_GCP_IMPERSONATE_SERVICE_ACCOUNT).
    """
    email = service_account_email(cfg, name)
    impersonators = list(impersonators)
    if impersonators:
        check_members(cfg, impersonators)
    key_path = Path(key_file) if key_file else None
    if key_path is not None and key_path.exists():
        raise ConfigError([("--key", f"{key_path} exists; not overwriting a credentials file")])
    result = Result()
    if iam.get_service_account(clients, email) is None:
        iam.create_service_account(clients, name, f"MLflow client {name}",
                                   "Runs jobs that log to the MLflow server (mlflow-gcp).")
        result.changes.append(Change("create", "service account", email, f"project {cfg.project}"))
    member = f"serviceAccount:{email}"
    result.changes += grant(clients, cfg, [member]).changes
    if impersonators:
        done = iampolicy.ensure(
            lambda: iam.get_iam_policy(clients, email),
            lambda p: iam.set_iam_policy(clients, email, p),
            add=[(TOKEN_CREATOR_ROLE, m) for m in impersonators],
        )
        result.changes += [Change("grant", r, m, f"service account {email}") for _, (r, m) in done]
    if key_path is not None:
        try:
            key = iam.create_key(clients, email)
        except OrgPolicyDenied as err:
            raise GcpError(
                f"no key written for {email}: the organization policy {err.constraint} forbids "
                "service-account keys (the account exists and may use the server)",
                hint=f"impersonate it instead: mlflow-gcp access create-sa {name} --impersonator "
                     f"user:YOU@example.com, then export MLFLOW_GCP_IMPERSONATE_SERVICE_ACCOUNT={email}",
            ) from err
        _write_secret_file(key_path, base64.b64decode(key["privateKeyData"]))
        result.warnings.append(
            f"wrote a service-account key to {key_path} (mode 0600): anyone with the file acts as "
            f"{email} until the key is deleted; prefer impersonation"
        )
        result.notes.append(f"use it with: export MLFLOW_GCP_CREDENTIALS_FILE={key_path}")
    else:
        result.notes += [
            f"On Google Cloud, run jobs as {email}: the plugin takes tokens from the metadata server.",
            f"Elsewhere, impersonate it: export MLFLOW_GCP_IMPERSONATE_SERVICE_ACCOUNT={email}",
            "  (your credentials need roles/iam.serviceAccountTokenCreator on it: "
            f"mlflow-gcp access create-sa {name} --impersonator user:YOU@example.com)",
        ]
    return result


def _write_secret_file(path: Path, data: bytes) -> None:
    # O_EXCL: never replace a file that appeared meanwhile; 0600 from the first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
