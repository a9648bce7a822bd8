"""`pause` / `resume`: stop and start the Cloud SQL instance, the largest fixed cost.

A stopped instance keeps its data, backups and settings and is billed only for storage (and its
IP address); Cloud Run scales to zero by itself, so a paused deployment costs almost nothing.
While paused the MLflow server cannot reach its database and answers errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_gcp.errors import MlflowGcpError
from mlflow_gcp.gcp import sql
from mlflow_gcp.ops import live

NEVER, ALWAYS = "NEVER", "ALWAYS"


@dataclass(frozen=True)
class Result:
    changed: bool
    message: str


def body(policy: str) -> dict:
    """The instances.patch body that stops (NEVER) or starts (ALWAYS) the instance."""
    return {"settings": {"activationPolicy": policy}}


def set_activation(ctx, policy: str) -> Result:
    name = ctx.cfg.database.instance
    inst = sql.get_instance(ctx.clients, name)
    if inst is None:
        raise MlflowGcpError(f"Cloud SQL instance {name} does not exist", hint=live.NOT_DEPLOYED_HINT)
    paused = live.is_paused(inst)
    if policy == NEVER and paused:
        return Result(False, f"{name} is already paused")
    if policy == ALWAYS and not paused:
        return Result(False, f"{name} is already running")
    ctx.say(("stopping" if policy == NEVER else "starting") + f" Cloud SQL instance {name}")
    sql.patch_instance(ctx.clients, name, body(policy), progress=ctx.progress)
    if policy == NEVER:
        return Result(True, f"paused: {name} is stopped; MLflow answers errors until `mlflow-gcp resume`")
    return Result(True, f"resumed: {name} is running; the server reconnects on its next request")


def pause(ctx) -> Result:
    return set_activation(ctx, NEVER)


def resume(ctx) -> Result:
    return set_activation(ctx, ALWAYS)
