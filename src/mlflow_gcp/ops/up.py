"""`plan` and `up`: inspect every step, show what would change, apply in dependency order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow_gcp.config import Config
from mlflow_gcp.errors import ApiDisabled, ConfigError
from mlflow_gcp.gcp import run, serviceusage
from mlflow_gcp.plan.model import NONE, Action, Plan
from mlflow_gcp.plan.steps import Context, Step, steps

PUBLIC_HINT = "rerun with --allow-public to confirm that anyone on the internet may use it"
PUBLIC_WARNING = ("access.mode = public: anyone on the internet can read and write this MLflow server "
                  "(Cloud Run's invoker check is off: invokerIamDisabled)")


def check_config(cfg: Config, allow_public: bool) -> None:
    """Refusals that need no API call: the connection budget and an unconfirmed public server."""
    cfg.pool()  # BudgetError naming the knob
    if cfg.access.mode == "public" and not allow_public:
        raise ConfigError([("access.mode", "public makes the server reachable by anyone")], hint=PUBLIC_HINT)


def _inspect(step: Step, ctx: Context) -> Action:
    try:
        return step.inspect(ctx)
    except ApiDisabled as err:
        # Only in a plan: `up` enables the APIs first; say what cannot be known yet.
        service = getattr(err, "service", "an API")
        return step.action(ctx, "create", detail=f"(unknown until {service} is enabled)")


def make_plan(ctx: Context) -> Plan:
    return Plan([_inspect(step, ctx) for step in steps()])


@dataclass
class UpResult:
    plan: Plan
    applied: list[Action] = field(default_factory=list)
    service: run.Service | None = None
    digest: str | None = None


def apply(ctx: Context, plan: Plan, *, clock: Callable[[], float] | None = None,
          result: UpResult | None = None) -> UpResult:
    """Re-inspect and apply each step in order; steps with nothing to do make no write.

    `result` (when given) is filled as steps complete, so a caller still knows what was applied
    when a later step fails."""
    result = result if result is not None else UpResult(plan)
    clock = clock or ctx.clients.clock
    ctx.applying = True
    all_steps = steps()
    total = len(all_steps)
    for index, step in enumerate(all_steps, 1):
        action = _fresh(step, ctx)
        if action.verb == NONE:
            continue
        summary = action.summary()
        ctx.say(f"[{index}/{total}] {action.verb} {action.kind} {action.name}" + (f": {summary}" if summary else ""))
        start = clock()
        _apply(step, ctx, action)
        ctx.say(f"  done in {clock() - start:.0f}s")
        result.applied.append(action)
    result.service = run.get_service(ctx.clients, ctx.cfg)
    result.digest = ctx.facts.get("digest")
    return result


def _fresh(step: Step, ctx: Context) -> Action:
    try:
        return step.inspect(ctx)
    except ApiDisabled as err:
        _enable(ctx, err)
        return step.inspect(ctx)


def _apply(step: Step, ctx: Context, action: Action) -> None:
    try:
        step.apply(ctx, action)
    except ApiDisabled as err:
        # An API outside the required list (or disabled meanwhile): enable it and go on.
        _enable(ctx, err)
        step.apply(ctx, _fresh(step, ctx))


def _enable(ctx: Context, err: ApiDisabled) -> None:
    service = getattr(err, "service", None)
    if not service:
        raise err
    ctx.say(f"  enabling {service}")
    serviceusage.enable(ctx.clients, [service], progress=ctx.progress)
