"""The one table from Google API errors to ours, and the one retry loop.

Every request goes through `execute()`: HttpError -> a subclass of mlflow_gcp.errors.GcpError
(cause chained), 429/5xx and transport errors retried with exponential backoff inside a time budget.
A 403 names the permission, the role that grants it and the gcloud command; a disabled API is
raised as ApiDisabled naming the service, so `up` can enable it.

Google is eventually consistent in two ways every command meets on a new project, and the same
loop waits them out whatever the call's own policy (see PROPAGATION): an API enabled minutes ago
still answers SERVICE_DISABLED (ApiNotReady), and a service account created a minute ago is
"does not exist" to IAM policies and to the APIs that run as it (AccountNotReady). Telling those
apart from a really disabled API or a really missing account needs a look at what exists, which
the caller (gcp.clients.Clients) does in its `classify` hook.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow_gcp.errors import (
    AlreadyExists,
    ApiDisabled,
    Conflict,
    GcpError,
    NotFound,
    OrgPolicyDenied,
    PermissionDenied,
    RateLimited,
    Unavailable,
)

log = logging.getLogger(__name__)


class Aborted(Unavailable):
    """Concurrent modification (409 ABORTED, 412 precondition): re-read and try again."""


class InvalidRequest(GcpError):
    """Google rejected the request as malformed or not allowed in the current state (400)."""


class ApiNotReady(GcpError):
    """SERVICE_DISABLED from an API that Service Usage says is enabled: the enablement has not
    reached the rest of Google yet."""

    def __init__(self, service: str, err: GcpError):
        super().__init__(f"{err.message} (enabled, but Google has not finished enabling it)", hint=err.hint,
                         status=err.status)
        self.service = service
        self.waiting_for = f"{service}, enabled recently, to answer (Google takes a few minutes)"


class AccountNotReady(InvalidRequest):
    """"Service account X does not exist" for an account that exists: it is too new for this API."""

    def __init__(self, email: str, err: GcpError):
        super().__init__(f"{err.message} (the account exists; Google has not made it known everywhere yet)",
                         status=err.status)
        self.account = email
        self.waiting_for = f"the new service account {email} to be known (Google takes a minute or more)"


class QuotaProjectMissing(GcpError):
    """SERVICE_DISABLED naming another project as the consumer: user credentials without a
    quota project bill gcloud's own project, where this API is off."""


@dataclass(frozen=True)
class RetryPolicy:
    """Which errors are retried, how fast, and for how long in total."""

    # Two minutes covers Google's usual quota refill window (per-minute quotas) and brief outages,
    # and is short enough that a real outage is reported while the user is still watching.
    budget_seconds: float = 120.0
    initial_delay: float = 1.0
    max_delay: float = 20.0
    multiplier: float = 2.0
    retryable: tuple[type[GcpError], ...] = (RateLimited, Unavailable)

    def delays(self):
        delay = self.initial_delay
        while True:
            yield delay
            delay = min(self.max_delay, delay * self.multiplier)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(budget_seconds=0.0)
# Google: "If you enabled this API recently, wait a few minutes for the action to propagate to our
# systems and retry"; users report up to ~5 minutes.
API_PROPAGATION = RetryPolicy(budget_seconds=300.0, initial_delay=5.0, max_delay=30.0, retryable=(ApiNotReady,))
# Google (IAM, eventual consistency): a new service account may be unknown to policies and other
# APIs for "60 seconds or more"; three minutes covers the slow cases without hiding a real error.
ACCOUNT_PROPAGATION = RetryPolicy(budget_seconds=180.0, initial_delay=5.0, max_delay=20.0,
                                  retryable=(AccountNotReady,))
# Waited out on every call, whatever the call's own policy: a refused call did nothing, so even a
# call that must not be repeated blindly (a build, a job run) may be sent again.
PROPAGATION = (API_PROPAGATION, ACCOUNT_PROPAGATION)

# Permission prefix -> the narrowest predefined role that holds it for what `up` does.
_ROLE_FOR_PERMISSION = (
    ("iam.serviceAccounts.actAs", "roles/iam.serviceAccountUser"),
    ("iam.serviceAccounts.getIamPolicy", "roles/iam.serviceAccountAdmin"),
    ("iam.serviceAccounts.setIamPolicy", "roles/iam.serviceAccountAdmin"),
    ("iam.serviceAccounts.", "roles/iam.serviceAccountAdmin"),
    ("resourcemanager.projects.setIamPolicy", "roles/resourcemanager.projectIamAdmin"),
    ("resourcemanager.projects.getIamPolicy", "roles/resourcemanager.projectIamAdmin"),
    ("resourcemanager.projects.get", "roles/browser"),
    ("cloudsql.", "roles/cloudsql.admin"),
    ("run.", "roles/run.admin"),
    ("storage.", "roles/storage.admin"),
    ("secretmanager.", "roles/secretmanager.admin"),
    ("artifactregistry.", "roles/artifactregistry.admin"),
    ("cloudbuild.", "roles/cloudbuild.builds.editor"),
    ("serviceusage.", "roles/serviceusage.serviceUsageAdmin"),
)
# When Google does not name the permission, the API tells us which admin role is needed.
_ROLE_FOR_API = {
    "sqladmin": "roles/cloudsql.admin",
    "run": "roles/run.admin",
    "storage": "roles/storage.admin",
    "secretmanager": "roles/secretmanager.admin",
    "artifactregistry": "roles/artifactregistry.admin",
    "cloudbuild": "roles/cloudbuild.builds.editor",
    "iam": "roles/iam.serviceAccountAdmin",
    "cloudresourcemanager": "roles/resourcemanager.projectIamAdmin",
    "serviceusage": "roles/serviceusage.serviceUsageAdmin",
    "iamcredentials": "roles/iam.serviceAccountTokenCreator",
    "logging": "roles/logging.viewer",
    "cloudscheduler": "roles/cloudscheduler.admin",
}
_PERMISSION_RE = re.compile(r"\b([a-z]+\.[a-zA-Z]+\.[a-zA-Z]+)\b")
_SERVICE_RE = re.compile(r"\b([a-z0-9-]+\.googleapis\.com)\b")
# 501 Not Implemented and 505 are permanent; these are worth another try.
_TRANSIENT_5XX = {500, 502, 503, 504}
_RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED", "quotaExceeded"}


def _payload(err: Any) -> dict:
    try:
        body = json.loads(err.content.decode("utf-8", "replace"))
    except (ValueError, AttributeError):
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _reasons(error: dict) -> tuple[set[str], dict]:
    reasons: set[str] = set()
    metadata: dict = {}
    for item in error.get("errors") or []:
        if isinstance(item, dict) and item.get("reason"):
            reasons.add(item["reason"])
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("reason"):
            reasons.add(detail["reason"])
            metadata.update(detail.get("metadata") or {})
    return reasons, metadata


# What each organization policy a new organization enforces means here (secure-by-default orgs).
ORG_POLICY_HINTS = {
    "iam.allowedPolicyMemberDomains":
        "domain-restricted sharing lets IAM policies name only members of your organization's "
        "domains (no allUsers, no outside accounts: ask an organization admin for an exception); a "
        "public server needs no allUsers binding: access.mode = \"public\" with `mlflow-gcp up "
        "--allow-public` turns Cloud Run's invoker check off instead (invokerIamDisabled)",
    "iam.disableServiceAccountKeyCreation":
        "service-account keys are disabled in this organization; impersonate the account instead "
        "(mlflow-gcp access create-sa NAME --impersonator user:YOU@example.com)",
}


def _constraint(error: dict) -> str | None:
    """The organization policy constraint a PreconditionFailure names, without `constraints/`."""
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        for violation in detail.get("violations") or []:
            kind = str(violation.get("type") or "") if isinstance(violation, dict) else ""
            if kind.startswith("constraints/"):
                return kind.removeprefix("constraints/")
    return None


def api_of(uri: str) -> str:
    """The API a request URI belongs to, for real endpoints and for <root>/<api>/ emulation."""
    from urllib.parse import urlparse

    parsed = urlparse(uri or "")
    host = parsed.hostname or ""
    if host.endswith(".googleapis.com"):
        return host.split(".")[0]
    parts = [p for p in parsed.path.split("/") if p]
    if parts and parts[0] == "upload" and len(parts) > 1:
        return parts[1]
    return parts[0] if parts else ""


def role_for(permission: str | None, api: str) -> str | None:
    if permission:
        for prefix, role in _ROLE_FOR_PERMISSION:
            if permission.startswith(prefix):
                return role
    return _ROLE_FOR_API.get(api)


def grant_command(project: str, role: str) -> str:
    return (
        f"gcloud projects add-iam-policy-binding {project} "
        f"--member=user:YOUR_EMAIL --role={role}"
    )


def translate(err: Any, what: str, *, project: str, uri: str = "") -> GcpError:
    """The GcpError subclass for a googleapiclient HttpError raised while doing `what`."""
    status = int(getattr(getattr(err, "resp", None), "status", 0) or 0)
    error = _payload(err)
    message = str(error.get("message") or getattr(err, "reason", "") or "no details").strip()
    state = str(error.get("status") or "")
    reasons, metadata = _reasons(error)
    api = api_of(uri or getattr(err, "uri", "") or "")
    text = f"{what}: {message}"

    if status == 401:
        return PermissionDenied(text, hint="credentials were rejected; run `gcloud auth application-default login`", status=status)
    if status == 403 and ("SERVICE_DISABLED" in reasons or "accessNotConfigured" in reasons
                          or "has not been used in project" in message or "is disabled" in message):
        service = metadata.get("service") or _first(_SERVICE_RE, message) or f"{api}.googleapis.com"
        exc = ApiDisabled(f"{what}: the {service} API is not enabled in project {project}",
                          hint=f"`mlflow-gcp up` enables it, or run `gcloud services enable {service} --project {project}`",
                          status=status)
        exc.service = service
        exc.consumer = metadata.get("consumer")  # "projects/<number>": who Google billed
        return exc
    if status == 429 or (status == 403 and reasons & _RATE_REASONS) or state == "RESOURCE_EXHAUSTED":
        return RateLimited(text, status=status)
    if status == 403:
        permission = metadata.get("permission") or _first(_PERMISSION_RE, message)
        role = role_for(permission, api)
        missing = f"missing permission {permission}" if permission else "permission denied"
        hint = None
        if role:
            hint = f"needs {role}; grant it with: {grant_command(project, role)}"
        exc = PermissionDenied(f"{what}: {missing} ({message})", hint=hint, status=status)
        exc.permission, exc.role = permission, role
        return exc
    constraint = _constraint(error) if status in (400, 412) else None
    if constraint:
        # iam.managed.* is the newer form of the same constraint.
        name = constraint.replace("iam.managed.", "iam.")
        exc = OrgPolicyDenied(f"{what}: refused by the organization policy {constraint} ({message})",
                              hint=ORG_POLICY_HINTS.get(name), status=status)
        exc.constraint = name
        return exc
    if status == 404:
        return NotFound(text, status=status)
    if status == 409:
        # Cloud SQL's "another operation is in progress" is a wait, never a sign the thing exists.
        if "operationInProgress" in reasons or "operation is in progress" in message.lower() \
                or "already in progress" in message.lower():
            return Aborted(text, status=status)
        if "not available" in message.lower():
            # A global name (a bucket) that someone else holds: waiting will not help.
            return Conflict(text, status=status)
        if state == "ALREADY_EXISTS" or "already exist" in message.lower() or "you already own" in message.lower():
            return AlreadyExists(text, status=status)
        return Aborted(text, status=status)
    if status == 412:
        return Aborted(text, status=status)
    if status in _TRANSIENT_5XX:
        return Unavailable(text, status=status)
    if status == 400:
        return InvalidRequest(text, status=status)
    return GcpError(f"{text} (HTTP {status})", status=status)


_ACCOUNT_MISSING_RE = re.compile(
    r"[Ss]ervice account (?:projects/[^/\s]+/serviceAccounts/)?([\w.+-]+@[\w-]+\.iam\.gserviceaccount\.com)"
    r"[^.]*? does not exist")


def missing_account(exc: GcpError) -> str | None:
    """The service account a 400 "Service account X does not exist" names, if that is the error."""
    if not isinstance(exc, InvalidRequest):
        return None
    return _first(_ACCOUNT_MISSING_RE, exc.message)


def _first(pattern: re.Pattern, text: str) -> str | None:
    m = pattern.search(text)
    return m.group(1) if m else None


def execute(
    request: Any,
    what: str,
    *,
    project: str,
    policy: RetryPolicy = DEFAULT_RETRY,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    classify: Callable[[GcpError], GcpError] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> dict:
    """request.execute() with the error table and the retry policies applied: `policy` for
    transient errors, PROPAGATION for Google's eventual consistency (`classify` turns an error
    into ApiNotReady / AccountNotReady when what exists says so; `progress` hears those waits)."""
    from googleapiclient.errors import HttpError

    start = clock()
    delays: dict[int, Any] = {}
    attempt = 0
    while True:
        attempt += 1
        try:
            return request.execute(num_retries=0) or {}
        except HttpError as err:
            exc = translate(err, what, project=project, uri=getattr(request, "uri", ""))
            cause: BaseException = err
        except (OSError, socket.timeout) as err:
            exc = Unavailable(f"{what}: cannot reach Google ({err.__class__.__name__}: {err})")
            cause = err
        if classify is not None:
            exc = classify(exc)
        matching = next((p for p in (policy, *PROPAGATION) if isinstance(exc, p.retryable)), None)
        if matching is None:
            raise exc from cause
        delay = next(delays.setdefault(id(matching), matching.delays()))
        elapsed = clock() - start
        if elapsed + delay > matching.budget_seconds:
            if attempt > 1:
                exc.message = f"{exc.message} (still failing after {attempt} attempts in {elapsed:.0f}s)"
            raise exc from cause
        log.debug("retrying %s in %.1fs after: %s", what, delay, exc)
        if progress is not None and matching in PROPAGATION:
            progress(getattr(exc, "waiting_for", what), elapsed)
        sleep(delay)
