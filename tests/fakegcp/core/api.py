"""The base of every per-API module: handler registration, the request handed to handlers, and
helpers the APIs share (timestamps, project numbers, IAM policies with etags, long-running
operations that finish after a number of polls)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import itertools
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .errors import GcpError, invalid_argument

if TYPE_CHECKING:
    from ..server import FakeGcp


def handles(*method_ids: str, versions: tuple[str, ...] | None = None):
    """Mark a method as the handler of discovery method ids (for all loaded versions unless told)."""

    def mark(fn):
        fn._handles = [(v, mid) for mid in method_ids for v in (versions or (None,))]
        return fn

    return mark


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def project_number(project: str) -> str:
    """A stable 12-digit project number for any project id (a number stays itself)."""
    if project.isdigit():
        return project
    return str(100000000000 + int(hashlib.sha256(project.encode()).hexdigest(), 16) % 899999999999)


def new_id() -> str:
    return uuid.uuid4().hex


def paginate(items: list, page_size, token, default_size: int = 1000) -> tuple[list, str | None]:
    """One page of items and the next page token (an offset), as list methods page results."""
    size = int(page_size or default_size) or default_size
    start = int(token or 0)
    page = items[start:start + size]
    return page, (str(start + size) if start + size < len(items) else None)


def deep_merge(target: dict, patch: dict) -> dict:
    """Merge a PATCH body into a resource: nested messages merge, lists and scalars replace."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def apply_mask(target: dict, patch: dict, mask: str | None) -> dict:
    """Apply an update mask ("a.b,c") the way AIP-134 says; no mask means merge what is given."""
    if not mask or mask == "*":
        return deep_merge(target, patch) if mask is None else _replace_all(target, patch)
    for path in mask.split(","):
        keys = path.strip().split(".")
        src, dst = patch, target
        for k in keys[:-1]:
            src = (src or {}).get(k) or {}
            dst = dst.setdefault(k, {})
        last = keys[-1]
        if isinstance(src, dict) and last in src and src[last] is not None:
            dst[last] = copy.deepcopy(src[last])
        else:
            dst.pop(last, None)
    return target


def _replace_all(target: dict, patch: dict) -> dict:
    for k in list(target):
        if k not in patch:
            target.pop(k)
    target.update(copy.deepcopy(patch))
    return target


@dataclass
class Request:
    """What a handler sees: the matched discovery method, decoded params, and the JSON body."""

    method: str
    api: str
    version: str
    method_id: str
    path: str
    params: dict[str, Any]
    body: Any
    raw_body: bytes = b""
    headers: dict = field(default_factory=dict)

    def get(self, name: str, default=None):
        return self.params.get(name, default)


class Operation:
    """A long-running operation that is done once `seconds` have passed on `clock` and it has
    been read `polls` times (0 and 0: done at once). refresh() finishes it on time alone."""

    _ids = itertools.count(1)

    def __init__(self, name: str, polls: int, on_done: Callable[[], Any] | None = None,
                 metadata: dict | None = None, error: GcpError | None = None, kind: str = "",
                 seconds: float = 0.0, clock: Callable[[], float] | None = None):
        self.name = name
        self.id = name.rsplit("/", 1)[-1]
        self.polls_left = polls
        self.clock = clock
        self.deadline = (clock() + seconds) if clock is not None and seconds > 0 else None
        self.on_done = on_done
        self.metadata = metadata or {}
        self.response: Any = None
        self.error = error
        self.done = False
        self.kind = kind
        self.created = now()
        self.ended: str | None = None
        if polls <= 0 and self.deadline is None:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self.ended = now()
        # on_done sees op.error (an injected failure) and may leave state half-done accordingly.
        if self.on_done is not None:
            try:
                response = self.on_done(self)
            except GcpError as err:
                self.error = err
            else:
                if self.error is None:
                    self.response = response

    def poll(self) -> None:
        if self.done:
            return
        self.polls_left -= 1
        if self.polls_left <= 0 and (self.deadline is None or self.clock() >= self.deadline):
            self._finish()

    def refresh(self) -> None:
        """Finish it if its time has come, read or not (Google does not wait for a poll)."""
        if not self.done and self.deadline is not None and self.clock() >= self.deadline:
            self._finish()

    def lro(self) -> dict:
        """google.longrunning.Operation JSON."""
        out: dict = {"name": self.name, "done": self.done}
        if self.metadata:
            out["metadata"] = self.metadata
        if self.done:
            if self.error is not None:
                out["error"] = {"code": _GRPC_CODE.get(self.error.status, 2),
                                "message": self.error.message}
            else:
                out["response"] = self.response if self.response is not None else {}
        return out


_GRPC_CODE = {"CANCELLED": 1, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
              "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
              "FAILED_PRECONDITION": 9, "ABORTED": 10, "INTERNAL": 13, "UNAVAILABLE": 14}


class IamPolicies:
    """getIamPolicy / setIamPolicy with etags, for any resource key.

    A setIamPolicy whose etag is not the current one fails like Google: 409 ABORTED for most
    APIs, 412 for Cloud Storage (set stale_code/stale_status)."""

    def __init__(self, stale_code: int = 409, stale_status: str = "ABORTED",
                 member_check: Callable[[str], None] | None = None):
        self.policies: dict[str, dict] = {}
        self.stale_code = stale_code
        self.stale_status = stale_status
        # Called for members a set adds (Google refuses service accounts that do not exist).
        self.member_check = member_check
        self._serial = itertools.count(1)

    def _etag(self) -> str:
        return base64.b64encode(next(self._serial).to_bytes(8, "big")).decode()

    def get(self, key: str) -> dict:
        policy = self.policies.get(key)
        if policy is None:
            policy = {"version": 1, "etag": "ACAB"}
            self.policies[key] = policy
        return copy.deepcopy(policy)

    def set(self, key: str, policy: dict) -> dict:
        current = self.get(key)
        etag = policy.get("etag")
        if etag is not None and etag != current["etag"]:
            if self.stale_code == 412:
                raise GcpError(412, "Precondition Failed", "FAILED_PRECONDITION", "conditionNotMet")
            raise GcpError(self.stale_code, "There were concurrent policy changes. Please retry "
                           "the whole read-modify-write with exponential backoff.",
                           self.stale_status, "aborted")
        bindings = []
        had = {m for b in current.get("bindings", []) for m in b.get("members", [])}
        version = policy.get("version", 1) or 1
        for b in policy.get("bindings", []) or []:
            if not b.get("role"):
                raise invalid_argument("Policy binding is missing a role.", field="policy.bindings")
            if not b["role"].startswith(("roles/", "projects/", "organizations/")):
                raise invalid_argument(f"Role {b['role']} is not supported for this resource.",
                                       field="policy.bindings.role")
            if b.get("condition") and int(version) < 3:
                raise invalid_argument("Policies with conditions must set version 3.",
                                       field="policy.version")
            members = sorted(set(b.get("members", [])))
            for m in members:
                if ":" not in m and m not in ("allUsers", "allAuthenticatedUsers"):
                    raise invalid_argument(f"Invalid member: {m}", field="policy.bindings.members")
                if m not in had and self.member_check is not None:
                    self.member_check(m)
            if members:
                nb = {"role": b["role"], "members": members}
                if b.get("condition"):
                    nb["condition"] = b["condition"]
                bindings.append(nb)
        new = {"version": version, "etag": self._etag()}
        if bindings:
            new["bindings"] = bindings
        if policy.get("auditConfigs"):
            new["auditConfigs"] = policy["auditConfigs"]
        self.policies[key] = new
        return copy.deepcopy(new)

    def delete(self, key: str) -> None:
        self.policies.pop(key, None)


class ApiModule:
    """One Google API. Subclasses set `name`, `versions`, `service`, `title` and handlers."""

    name: str = ""
    versions: tuple[str, ...] = ()
    service: str = ""  # e.g. "sqladmin.googleapis.com"
    title: str = ""  # e.g. "Cloud SQL Admin API"

    def __init__(self, fake: "FakeGcp"):
        self.fake = fake
        self.handlers: dict[tuple[str | None, str], Callable] = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr)
            for key in getattr(fn, "_handles", ()):
                self.handlers[key] = getattr(self, attr)
        self.reset()

    def reset(self) -> None:
        """Forget all state (called for each test)."""

    @handles("run.projects.locations.services.testIamPermissions",
             "run.projects.locations.jobs.testIamPermissions",
             "cloudresourcemanager.projects.testIamPermissions",
             "secretmanager.projects.secrets.testIamPermissions",
             "iam.projects.serviceAccounts.testIamPermissions",
             "storage.buckets.testIamPermissions")
    def test_iam_permissions(self, req: Request) -> dict:
        """The caller holds every permission asked for, except those FakeGcp.deny_permission named."""
        asked = req.get("permissions") if req.body is None else (req.body or {}).get("permissions")
        asked = asked if isinstance(asked, list) else [asked] if asked else []
        held = [p for p in asked if p not in self.fake.denied_permissions]
        out: dict = {"kind": "storage#testIamPermissionsResponse"} if self.name == "storage" else {}
        if held:
            out["permissions"] = held
        return out

    def alias_path(self, raw_path: str) -> str:
        """Map paths clients use that discovery does not list (e.g. GCS /download/) onto ones it does."""
        return raw_path

    def handler_for(self, version: str, method_id: str):
        return self.handlers.get((version, method_id)) or self.handlers.get((None, method_id))

    def project_of(self, req: Request) -> str | None:
        """The consumer project of a request, for the SERVICE_DISABLED check."""
        for key in ("project", "projectId", "projectsId"):
            if req.params.get(key):
                return req.params[key]
        for key in ("name", "parent", "resource"):
            value = req.params.get(key) or ""
            if value.startswith("projects/"):
                return value.split("/")[1]
        return None

    def snapshot(self) -> dict:
        """The resources this API holds, for comparing runs (see FakeGcp.snapshot)."""
        return {"state": self.state}

    def op_polls(self) -> int:
        return self.fake.op_polls

    def new_operation(self, name: str, on_done=None, metadata=None, kind: str = "",
                      target: str = "") -> Operation:
        """target ("<resource name> <kind>") is what fail_next_operation(target_regex=) matches."""
        error = self.fake._take_operation_failure(self.name, target)
        return Operation(name, self.op_polls(), on_done, metadata, error, kind,
                         seconds=self.fake.operation_seconds(self.name, target), clock=self.fake.clock)

    @staticmethod
    def state_copy(obj):
        return copy.deepcopy(obj)
