"""The connection budget across a database tier change (budget.py: DB_CONNECTIONS per instance
comes from the tier's max_connections).

When the tier grows, the instance changes first and the service gets its larger share after it
(the usual step order). When the tier shrinks below what the running service may open
(maxInstanceCount x DB_CONNECTIONS + the reserve), this step runs before the instance step: it
gives the running service its smaller share (the new DB_CONNECTIONS and scaling bounds, same
image, everything else as read), so at no moment may the service open more connections than the
instance allows. The service step later rolls out the rest.
"""

from __future__ import annotations

from mlflow_gcp import budget
from mlflow_gcp.gcp import run, runrevisions, sql
from mlflow_gcp.plan import desired
from mlflow_gcp.plan.context import Step
from mlflow_gcp.plan.diff import Change
from mlflow_gcp.plan.model import NONE, UPDATE

_ENV = runrevisions.CONNECTIONS_ENV
_ENV_PATH = f"template.containers[{desired.CONTAINER_NAME}].env[{_ENV}].value"
_SCALING_PATH = "template.scaling.maxInstanceCount"
_MIN_PATH = "template.scaling.minInstanceCount"


def _container(raw: dict) -> dict | None:
    for c in (raw.get("template") or {}).get("containers") or []:
        if c.get("name") == desired.CONTAINER_NAME:
            return c
    return None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def footprint(raw: dict) -> tuple[int | None, int | None]:
    """(maxInstanceCount, DB_CONNECTIONS) of the deployed service; None where unknown."""
    env = {e.get("name"): e.get("value") for e in (_container(raw) or {}).get("env") or []}
    return _int(((raw.get("template") or {}).get("scaling") or {}).get("maxInstanceCount")), _int(env.get(_ENV))


class ServiceBudgetFirst(Step):
    key, kind = "service_budget", "Cloud Run service"

    def name(self, ctx):
        return ctx.cfg.service.name

    def inspect(self, ctx):
        cfg = ctx.cfg
        instance = sql.get_instance(ctx.clients, cfg.database.instance)
        tier = ((instance or {}).get("settings") or {}).get("tier")
        if not tier or tier == cfg.database.tier:
            return self.action(ctx, NONE)
        try:
            shrinks = budget.tier_max_connections(tier) > cfg.database.max_connections
        except ValueError:  # a tier this tool does not know: assume the worst
            shrinks = True
        raw = run.get_service_raw(ctx.clients, cfg.region, cfg.service.name)
        if not shrinks or raw is None or _container(raw) is None:  # not ours: the service step replaces it
            return self.action(ctx, NONE)
        instances, share = footprint(raw)
        allowed = cfg.database.max_connections - budget.RESERVED_CONNECTIONS
        if instances is not None and share is not None and instances * share <= allowed:
            return self.action(ctx, NONE)
        want_instances, want_share = cfg.service.max_instances, cfg.connections_per_instance()
        changes = [Change(_ENV_PATH, None if share is None else str(share), str(want_share),
                          desired.FIELD_LABELS.get(_ENV_PATH))]
        if instances != want_instances:
            changes.append(Change(_SCALING_PATH, instances, want_instances, desired.FIELD_LABELS.get(_SCALING_PATH)))
        lowest = ((raw.get("template") or {}).get("scaling") or {}).get("minInstanceCount") or 0
        if _int(lowest) != cfg.service.min_instances:
            changes.append(Change(_MIN_PATH, lowest, cfg.service.min_instances, desired.FIELD_LABELS.get(_MIN_PATH)))
        # For the plan: these are done here, the service step shows only the rest.
        ctx.facts["service_budget_first"] = {c.path for c in changes}
        return self.action(ctx, UPDATE, changes=changes, current=raw,
                           detail=f"before the database shrinks to {cfg.database.tier} "
                                  f"({cfg.database.max_connections} connections)")

    def apply(self, ctx, action):
        cfg, raw = ctx.cfg, action.current
        body = runrevisions.input_body(raw)
        runrevisions.set_instance_budget(body, cfg.service.min_instances, cfg.service.max_instances,
                                         cfg.connections_per_instance())
        if raw.get("etag"):
            body["etag"] = raw["etag"]  # a concurrent change fails this write; the rerun re-reads
        runrevisions.patch_service(ctx.clients, cfg.region, cfg.service.name, body, progress=ctx.progress)
