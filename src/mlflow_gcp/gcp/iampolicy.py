"""IAM policies as data: which bindings are missing, and the merged policy to write.

Read, compare, write only when something is missing (with the etag read, so a concurrent change
makes the write fail instead of being lost); one helper serves every resource type.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

from mlflow_gcp.gcp.errors import Aborted

Binding = tuple[str, str]  # (role, member)

# Re-reads after a concurrent modification before giving up.
_ETAG_ATTEMPTS = 3


def members_of(policy: dict, role: str) -> set[str]:
    out: set[str] = set()
    for b in policy.get("bindings") or []:
        if b.get("role") == role and not b.get("condition"):
            out.update(b.get("members") or [])
    return out


def missing(policy: dict, wanted: Iterable[Binding]) -> list[Binding]:
    return [(r, m) for r, m in wanted if m not in members_of(policy, r)]


def present(policy: dict, unwanted: Iterable[Binding]) -> list[Binding]:
    return [(r, m) for r, m in unwanted if m in members_of(policy, r)]


def merged(policy: dict, add: Iterable[Binding] = (), remove: Iterable[Binding] = ()) -> dict:
    """A copy of `policy` with `add` bindings present and `remove` bindings absent."""
    out = copy.deepcopy(policy)
    bindings = out.setdefault("bindings", [])
    for role, member in add:
        for b in bindings:
            if b.get("role") == role and not b.get("condition"):
                if member not in b.setdefault("members", []):
                    b["members"].append(member)
                break
        else:
            bindings.append({"role": role, "members": [member]})
    drop = set(remove)
    if drop:
        for b in bindings:
            if not b.get("condition"):
                b["members"] = [m for m in b.get("members") or [] if (b.get("role"), m) not in drop]
        out["bindings"] = [b for b in bindings if b.get("members")]
    return out


def ensure(
    get: Callable[[], dict],
    set_: Callable[[dict], dict],
    add: Iterable[Binding] = (),
    remove: Iterable[Binding] = (),
) -> list[tuple[str, Binding]]:
    """Make the policy hold `add` and not `remove`; the changes made (empty: no write at all)."""
    add, remove = list(add), list(remove)
    for attempt in range(_ETAG_ATTEMPTS):
        policy = get()
        to_add, to_remove = missing(policy, add), present(policy, remove)
        if not to_add and not to_remove:
            return []
        try:
            set_(merged(policy, to_add, to_remove))
        except Aborted:
            if attempt == _ETAG_ATTEMPTS - 1:
                raise
            continue
        return [("add", b) for b in to_add] + [("remove", b) for b in to_remove]
    return []
