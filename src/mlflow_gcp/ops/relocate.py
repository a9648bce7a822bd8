"""`relocate-artifacts`: the old experiments' gs:// artifact locations rewritten to
mlflow-artifacts:/ (server/relocate.py), run where the database is reachable: as the migration
job, with other arguments. A dry run first says how many; --apply takes an on-demand backup
first (the call `upgrade` uses), then rewrites."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_gcp.gcp import logging as glog
from mlflow_gcp.gcp import run, sqlbackup
from mlflow_gcp.ops import live, logs

COMMAND = "relocate-artifacts"


@dataclass
class RelocateResult:
    applied: bool
    execution: str
    summary: str | None  # the job's own line, read back from its log; None when not found
    backup_id: str | None = None


def relocate(ctx, *, apply: bool) -> RelocateResult:
    cfg = ctx.cfg
    live.require_running(ctx, "relocating artifact locations")
    backup_id = None
    if apply:
        ctx.say(f"backing up {cfg.database.instance} first")
        backup_id = sqlbackup.create_backup(ctx.clients, cfg.database.instance,
                                            "before relocating artifact locations", progress=ctx.progress)["id"]
        ctx.say(f"backup {backup_id} taken; to undo: mlflow-gcp backup restore {backup_id}")
    ctx.say(f"running job {cfg.migrate_job_name} with `{COMMAND}{' --apply' if apply else ''}`")
    execution = run.run_job(ctx.clients, cfg.region, cfg.migrate_job_name, progress=ctx.progress,
                            args=[COMMAND, "--apply"] if apply else [COMMAND])
    name = execution.get("name", "").rsplit("/", 1)[-1]
    entries = glog.list_entries(ctx.clients, (
        f'resource.type="cloud_run_job" AND resource.labels.job_name="{cfg.migrate_job_name}"'), limit=50)
    lines = [logs.message(e) for e in entries
             if (e.get("labels") or {}).get("run.googleapis.com/execution_name") == name
             and COMMAND in logs.message(e)]
    return RelocateResult(apply, name, lines[0] if lines else None, backup_id)
