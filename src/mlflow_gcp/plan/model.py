"""What a plan is made of: one Action per resource, in the order `up` applies them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlflow_gcp.plan.diff import Change

CREATE, UPDATE, NONE, RUN, DELETE = "create", "update", "no change", "run", "delete"
# IAM steps describe their changes in their detail already.
_DETAIL_ONLY = {"bucket_iam", "secret_iam", "gateway_secret_iam", "project_iam", "sa_iam", "invokers"}


@dataclass
class Action:
    key: str
    kind: str
    name: str
    verb: str
    changes: list[Change] = field(default_factory=list)
    detail: str = ""
    current: Any = field(default=None, repr=False)
    data: dict = field(default_factory=dict, repr=False)
    # What a careful operator must know before applying (a one-way change, a password that
    # changes, clients that lose access): printed under the plan, never hidden in a diff line.
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.verb != NONE

    def summary(self) -> str:
        if self.verb == UPDATE and self.changes and self.key not in _DETAIL_ONLY:
            text = ", ".join(str(c) for c in self.changes)
            return f"{text} ({self.detail})" if self.detail else text
        return self.detail

    def as_dict(self) -> dict:
        return {
            "resource": self.kind,
            "name": self.name,
            "action": self.verb,
            "changes": [c.as_dict() for c in self.changes],
            "detail": self.detail,
            "notes": list(self.notes),
        }


@dataclass
class Plan:
    actions: list[Action]

    @property
    def changes(self) -> list[Action]:
        return [a for a in self.actions if a.changed]

    @property
    def empty(self) -> bool:
        return not self.changes

    def as_dict(self) -> dict:
        return {"changes": len(self.changes), "resources": [a.as_dict() for a in self.actions]}
