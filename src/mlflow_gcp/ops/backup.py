"""`backup create|list|restore`: Cloud SQL backups of the MLflow database.

Restore overwrites every experiment, run and model version with the backup's: it always takes a
safety backup of the current state first, waits until that backup has SUCCEEDED, and does not
restore at all otherwise. Artifacts in the bucket are not part of a database backup.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_gcp.errors import GcpError, MlflowGcpError, NotFound
from mlflow_gcp.gcp import run, sqlbackup
from mlflow_gcp.ops import live


class RestoreRefused(MlflowGcpError):
    """The safety backup did not succeed, so nothing was restored."""


def rows(backups: list[dict]) -> list[dict]:
    return [
        {"id": b.get("id"), "type": b.get("type"), "status": b.get("status"),
         "time": b.get("endTime") or b.get("windowStartTime") or b.get("enqueuedTime"),
         "description": b.get("description") or ""}
        for b in backups
    ]


def list_backups(ctx) -> list[dict]:
    name = ctx.cfg.database.instance
    try:
        return rows(sqlbackup.list_backups(ctx.clients, name))
    except NotFound:
        raise MlflowGcpError(f"Cloud SQL instance {name} does not exist", hint=live.NOT_DEPLOYED_HINT) from None


def create(ctx, description: str = "on-demand backup by mlflow-gcp") -> dict:
    live.require_running(ctx, "a backup")
    ctx.say(f"backing up {ctx.cfg.database.instance}")
    return rows([sqlbackup.create_backup(ctx.clients, ctx.cfg.database.instance, description,
                                         progress=ctx.progress)])[0]


@dataclass
class RestoreResult:
    restored: str
    safety_backup: str
    migrated: bool


def check_restorable(ctx, backup_id: str) -> dict:
    """The backup to restore, or a clear error; no write."""
    name = ctx.cfg.database.instance
    live.require_running(ctx, "a restore")
    found = sqlbackup.get_backup(ctx.clients, name, backup_id)
    if found is None:
        raise NotFound(f"backup {backup_id} of {name} does not exist", hint="see `mlflow-gcp backup list`")
    if found.get("status") != "SUCCESSFUL":
        raise MlflowGcpError(f"backup {backup_id} is {found.get('status')}, not SUCCESSFUL; it cannot be restored")
    return found


def restore(ctx, backup_id: str) -> RestoreResult:
    """Safety backup, then restore, then bring the schema up to the running image's MLflow."""
    cfg = ctx.cfg
    name = cfg.database.instance
    check_restorable(ctx, backup_id)
    ctx.say(f"taking a safety backup of {name} before restoring")
    try:
        safety = sqlbackup.create_backup(ctx.clients, name, f"safety backup before restoring {backup_id}",
                                         progress=ctx.progress)
    except GcpError as err:
        raise RestoreRefused(
            f"the safety backup failed, so backup {backup_id} was NOT restored: {err.message}",
            hint="nothing was changed; retry later, or look at `gcloud sql operations list "
                 f"--instance {name} --project {cfg.project}`",
        ) from err
    ctx.say(f"safety backup {safety['id']} done; restoring backup {backup_id} onto {name}")
    try:
        sqlbackup.restore_backup(ctx.clients, name, backup_id, progress=ctx.progress)
    except GcpError as err:
        raise MlflowGcpError(f"the restore of backup {backup_id} failed: {err.message}",
                             hint=f"the state before it is safety backup {safety['id']}") from err
    # An older backup may hold an older MLflow schema, on which the server refuses to start.
    migrated = False
    if run.get_job(ctx.clients, cfg.region, cfg.migrate_job_name) is not None:
        ctx.say("bringing the restored schema up to the deployed MLflow version")
        run.run_job(ctx.clients, cfg.region, cfg.migrate_job_name, progress=ctx.progress)
        migrated = True
    return RestoreResult(backup_id, safety["id"], migrated)
