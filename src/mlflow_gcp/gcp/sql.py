"""Cloud SQL Admin: the instance, its database and its user."""

from __future__ import annotations

from mlflow_gcp.errors import AlreadyExists, Conflict, NotFound
from mlflow_gcp.gcp import operations
from mlflow_gcp.gcp.errors import DEFAULT_RETRY, RetryPolicy

# Creating an instance takes 5-15 minutes on Google; 30 leaves room for a slow day.
CREATE_TIMEOUT_SECONDS = 30 * 60
PATCH_TIMEOUT_SECONDS = 20 * 60
SMALL_TIMEOUT_SECONDS = 5 * 60
# Cloud SQL refuses changes (409 operationInProgress) while it runs its own operations, such as
# the first backup right after creation, which can take several minutes: wait longer for those.
BUSY_RETRY = RetryPolicy(budget_seconds=10 * 60, max_delay=30.0, retryable=DEFAULT_RETRY.retryable)


def _retry(clients) -> RetryPolicy:
    # Tests (and callers) that ask for no retries keep that; otherwise wait out a busy instance.
    return clients.retry if clients.retry.budget_seconds <= 0 else BUSY_RETRY


def _instances(clients):
    return clients.api("sqladmin").instances()


def get_instance(clients, name: str) -> dict | None:
    return operations.read(
        clients, _instances(clients).get(project=clients.project, instance=name), f"reading Cloud SQL instance {name}"
    )


# States in which the instance is busy with something it will finish by itself.
_BUSY_STATES = {"PENDING_CREATE", "MAINTENANCE", "PENDING_DELETE"}


def wait_ready(clients, name: str, current: dict, progress=None) -> dict:
    """`current`, or the instance once it leaves a busy state (e.g. a creation another run began)."""
    if current.get("state") not in _BUSY_STATES:
        return current
    return operations.wait_until(
        clients, lambda: get_instance(clients, name) or {}, lambda i: i.get("state") not in _BUSY_STATES,
        what=f"Cloud SQL instance {name} to be ready", timeout=CREATE_TIMEOUT_SECONDS, progress=progress,
    )


def create_instance(clients, body: dict, progress=None) -> bool:
    """Create and wait; False when it already existed (another run created it)."""
    name = body["name"]
    try:
        op = clients.execute(
            _instances(clients).insert(project=clients.project, body=body), f"creating Cloud SQL instance {name}"
        )
    except AlreadyExists as err:
        if get_instance(clients, name) is None:
            # Cloud SQL keeps a deleted instance's name reserved for about a week.
            raise Conflict(
                f"the name {name} belonged to a recently deleted Cloud SQL instance and cannot be "
                "reused yet (Cloud SQL reserves it for about a week)",
                hint="set database.instance to a new name, e.g. --set database.instance=" + f"{name}-2",
            ) from err
        return False
    operations.wait(clients, op, api="sqladmin", what=f"Cloud SQL instance {name} to be created",
                    timeout=CREATE_TIMEOUT_SECONDS, progress=progress)
    return True


def patch_instance(clients, name: str, body: dict, progress=None) -> None:
    op = clients.execute(
        _instances(clients).patch(project=clients.project, instance=name, body=body),
        f"updating Cloud SQL instance {name}", retry=_retry(clients),
    )
    operations.wait(clients, op, api="sqladmin", what=f"Cloud SQL instance {name} to be updated",
                    timeout=PATCH_TIMEOUT_SECONDS, progress=progress)


def delete_instance(clients, name: str, *, final_backup_days: int | None, progress=None) -> bool:
    kwargs = {}
    if final_backup_days:
        kwargs = {
            "enableFinalBackup": True,
            "finalBackupTtlDays": str(final_backup_days),
            "finalBackupDescription": "final backup taken by mlflow-gcp destroy",
        }
    return operations.change(
        clients, _instances(clients).delete(project=clients.project, instance=name, **kwargs),
        f"deleting Cloud SQL instance {name}", api="sqladmin", wait_for=f"Cloud SQL instance {name} to be deleted",
        timeout=PATCH_TIMEOUT_SECONDS, progress=progress, retry=_retry(clients), tolerate=(NotFound,),
    )


def get_database(clients, instance: str, database: str) -> dict | None:
    return operations.read(
        clients,
        clients.api("sqladmin").databases().get(project=clients.project, instance=instance, database=database),
        f"reading database {database}",
    )


def create_database(clients, instance: str, database: str, progress=None) -> bool:
    return operations.change(
        clients,
        clients.api("sqladmin").databases().insert(
            project=clients.project, instance=instance, body={"name": database, "instance": instance}
        ),
        f"creating database {database}", api="sqladmin", wait_for=f"database {database}",
        timeout=SMALL_TIMEOUT_SECONDS, progress=progress, retry=_retry(clients), tolerate=(AlreadyExists,),
    )


def get_user(clients, instance: str, user: str) -> dict | None:
    return operations.read(
        clients,
        clients.api("sqladmin").users().get(project=clients.project, instance=instance, name=user),
        f"reading database user {user}",
    )


def list_users(clients, instance: str) -> list[dict]:
    resp = clients.execute(
        clients.api("sqladmin").users().list(project=clients.project, instance=instance),
        f"listing the database users of {instance}",
    )
    return resp.get("items") or []


def create_user(clients, instance: str, user: str, password: str, progress=None) -> bool:
    return operations.change(
        clients,
        clients.api("sqladmin").users().insert(
            project=clients.project, instance=instance, body={"name": user, "password": password}
        ),
        f"creating database user {user}", api="sqladmin", wait_for=f"database user {user}",
        timeout=SMALL_TIMEOUT_SECONDS, progress=progress, retry=_retry(clients), tolerate=(AlreadyExists,),
    )


def set_password(clients, instance: str, user: str, password: str, progress=None) -> None:
    op = clients.execute(
        clients.api("sqladmin").users().update(
            project=clients.project, instance=instance, name=user, body={"name": user, "password": password}
        ),
        f"setting the password of database user {user}", retry=_retry(clients),
    )
    operations.wait(clients, op, api="sqladmin", what=f"database user {user}", timeout=SMALL_TIMEOUT_SECONDS,
                    progress=progress)
