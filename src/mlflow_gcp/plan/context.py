"""What every step shares: the deployment, the API clients, facts learned along the way
(project number, image digest, the password generated in this run), and the Step interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow_gcp.config import Config
from mlflow_gcp.errors import ApiDisabled
from mlflow_gcp.gcp import iampolicy, resourcemanager
from mlflow_gcp.plan.model import Action


@dataclass
class Context:
    cfg: Config
    clients: Any
    say: Callable[[str], None] = lambda line: None
    progress: Callable[[str, float], None] | None = None
    facts: dict = field(default_factory=dict)
    applying: bool = False  # False while planning: never wait, never write

    @property
    def project_number(self) -> str | None:
        if "project_number" not in self.facts:
            try:
                self.facts["project_number"] = resourcemanager.project_number(self.clients)
            except ApiDisabled:
                return None
        return self.facts["project_number"]

    @property
    def image(self) -> str:
        """The image the job and service run: pinned by digest once known."""
        return self.facts.get("image") or self.cfg.image_uri


class Step:
    key = ""
    kind = ""

    def name(self, ctx: Context) -> str:
        raise NotImplementedError

    def inspect(self, ctx: Context) -> Action:
        raise NotImplementedError

    def apply(self, ctx: Context, action: Action) -> None:
        raise NotImplementedError

    def action(self, ctx: Context, verb: str, **kw) -> Action:
        return Action(self.key, self.kind, self.name(ctx), verb, **kw)


def ensure_bindings(ctx: Context, get: Callable[[], dict], set_: Callable[[dict], Any], add, remove) -> None:
    """iampolicy.ensure (a member IAM does not know yet is waited out by every call: gcp.errors)."""
    iampolicy.ensure(get, set_, add, remove)
