"""`scale`: change the Cloud Run instance limits, within the database's connection budget.

Only the service's scaling and the per-instance connection share (DB_CONNECTIONS, which sizes
the server's pools) change; Cloud Run starts a new revision for the latter. The config file gets
the new limits so the next `up` keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_gcp import budget
from mlflow_gcp.errors import BudgetError, ConfigError, MlflowGcpError
from mlflow_gcp.gcp import run, runrevisions
from mlflow_gcp.ops import live

# Tiers to suggest, cheapest first (shared-core, then the smallest custom machines).
TIER_LADDER = ("db-f1-micro", "db-g1-small", "db-custom-1-3840", "db-custom-2-7680", "db-custom-4-15360",
               "db-custom-8-30720", "db-custom-16-61440")


def tier_that_fits(max_instances: int, workers: int) -> str | None:
    for tier in TIER_LADDER:
        try:
            budget.check(tier, max_instances, workers)
            return tier
        except ValueError:
            continue
    return None


def new_config(cfg, max_instances: int, min_instances: int | None):
    from mlflow_gcp import config as config_mod

    data = cfg.model_dump()
    data["service"]["max_instances"] = max_instances
    if min_instances is not None:
        data["service"]["min_instances"] = min_instances
    new = config_mod.from_dict(data)
    try:
        new.pool()
    except BudgetError as err:
        tier = tier_that_fits(max_instances, new.service.workers)
        hint = (f"{tier} would fit: set database.tier = \"{tier}\", run `mlflow-gcp up`, then scale" if tier
                else "no tier up to db-custom-16-61440 fits; use fewer instances or workers")
        raise BudgetError(err.problems, hint=hint) from None
    return new


@dataclass
class ScaleResult:
    changed: bool
    min_instances: int
    max_instances: int
    per_instance: int
    saved_to: str | None = None


def scale(ctx, max_instances: int, min_instances: int | None = None, config_file=None) -> ScaleResult:
    cfg = new_config(ctx.cfg, max_instances, min_instances)
    svc = cfg.service
    raw = run.get_service_raw(ctx.clients, cfg.region, svc.name)
    if raw is None:
        raise MlflowGcpError(f"Cloud Run service {svc.name} is not deployed", hint=live.NOT_DEPLOYED_HINT)
    live.require_latest_traffic(raw, "new instance limits")
    body = runrevisions.input_body(raw)
    per_instance = cfg.connections_per_instance()
    saved = None
    if runrevisions.set_instance_budget(body, svc.min_instances, svc.max_instances, per_instance):
        ctx.say(f"scaling {svc.name} to {svc.min_instances}..{svc.max_instances} instances "
                f"({per_instance} database connections each)")
        # Limits and connection share change together, in one new revision.
        runrevisions.patch_service(ctx.clients, cfg.region, svc.name, body, progress=ctx.progress)
        changed = True
    else:
        changed = False
    if config_file is not None and live.save_settings(
        config_file, {("service", "max_instances"): svc.max_instances, ("service", "min_instances"): svc.min_instances}
    ):
        saved = str(config_file)
    return ScaleResult(changed, svc.min_instances, svc.max_instances, per_instance, saved)


def check_args(max_instances: int, min_instances: int | None) -> None:
    if min_instances is not None and min_instances > max_instances:
        raise ConfigError([("min-instances", "must not exceed --max-instances")])
