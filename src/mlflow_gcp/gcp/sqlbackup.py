"""Cloud SQL Admin: on-demand backups, their list, and restoring one onto the instance."""

from __future__ import annotations

from mlflow_gcp.errors import NotFound, OperationFailed
from mlflow_gcp.gcp import operations

# A backup of a small MLflow database takes a minute or two; a restore several.
BACKUP_TIMEOUT_SECONDS = 30 * 60
RESTORE_TIMEOUT_SECONDS = 60 * 60


def _runs(clients):
    return clients.api("sqladmin").backupRuns()


def list_backups(clients, instance: str) -> list[dict]:
    """Backup runs, newest first."""
    resp = clients.execute(_runs(clients).list(project=clients.project, instance=instance),
                           f"listing backups of {instance}")
    items = resp.get("items") or []
    return sorted(items, key=lambda b: int(b.get("id") or 0), reverse=True)


def get_backup(clients, instance: str, backup_id: str) -> dict | None:
    try:
        return clients.execute(_runs(clients).get(project=clients.project, instance=instance, id=backup_id),
                               f"reading backup {backup_id}")
    except NotFound:
        return None


def create_backup(clients, instance: str, description: str, progress=None) -> dict:
    """Take an on-demand backup and wait for it; the finished BackupRun.

    OperationFailed unless the backup really ended SUCCESSFUL: a caller about to overwrite the
    database relies on that."""
    op = clients.execute(
        _runs(clients).insert(project=clients.project, instance=instance, body={"description": description}),
        f"starting a backup of {instance}",
    )
    backup_id = (op.get("backupContext") or {}).get("backupId")
    operations.wait(clients, op, api="sqladmin", what=f"the backup of {instance}",
                    timeout=BACKUP_TIMEOUT_SECONDS, progress=progress)
    if backup_id:
        run = get_backup(clients, instance, backup_id)
    else:
        # The operation does not always name its backup: take the newest one with our description.
        ours = [b for b in list_backups(clients, instance)
                if b.get("type") == "ON_DEMAND" and b.get("description") == description]
        run = ours[0] if ours else None
    if run is None or run.get("status") != "SUCCESSFUL":
        raise OperationFailed(
            f"the backup of {instance} did not succeed (status {run.get('status') if run else 'unknown'})"
        )
    return run


def restore_backup(clients, instance: str, backup_id: str, progress=None) -> None:
    body = {"restoreBackupContext": {"backupRunId": backup_id, "instanceId": instance, "project": clients.project}}
    op = clients.execute(
        clients.api("sqladmin").instances().restoreBackup(project=clients.project, instance=instance, body=body),
        f"restoring backup {backup_id} onto {instance}",
    )
    operations.wait(clients, op, api="sqladmin", what=f"the restore of backup {backup_id}",
                    timeout=RESTORE_TIMEOUT_SECONDS, progress=progress)
