"""`destroy`: delete the deployment in reverse order, say what was kept. Running it twice is safe:
every delete tolerates NotFound and every read comes before a write."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow_gcp.gcp import artifactregistry, iam, iampolicy, resourcemanager, run, secretmanager, sql, storage
from mlflow_gcp.plan import desired
from mlflow_gcp.plan.steps import Context

# How long Cloud SQL keeps the final backup taken at deletion.
FINAL_BACKUP_DAYS = 30


@dataclass
class DestroyResult:
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def destroy(ctx: Context, *, backup: bool = True, keep_bucket: bool = False) -> DestroyResult:
    cfg, clients = ctx.cfg, ctx.clients
    out = DestroyResult()

    def done(deleted: bool, what: str) -> None:
        if deleted:
            out.deleted.append(what)
            ctx.say(f"deleted {what}")

    # The schedule first: its jobs would otherwise go on stopping and starting an instance of this
    # name, today's while it is deleted and a future deployment's after.
    from mlflow_gcp.ops import schedule

    gone, kept = schedule.remove_all(ctx)
    for what in gone:
        done(True, what)
    out.kept += kept
    # Read before every delete: a second destroy makes no write at all.
    if run.get_service_raw(clients, cfg.region, cfg.service.name) is not None:
        done(run.delete_service(clients, cfg.region, cfg.service.name, progress=ctx.progress),
             f"Cloud Run service {cfg.service.name}")
    if run.get_job(clients, cfg.region, cfg.migrate_job_name) is not None:
        done(run.delete_job(clients, cfg.region, cfg.migrate_job_name, progress=ctx.progress),
             f"Cloud Run job {cfg.migrate_job_name}")
    if not cfg.service.image and artifactregistry.get_repository(clients, cfg.region, cfg.service.repository):
        done(artifactregistry.delete_repository(clients, cfg.region, cfg.service.repository, progress=ctx.progress),
             f"Artifact Registry repository {cfg.service.repository}")
    removed = iampolicy.ensure(
        lambda: resourcemanager.get_iam_policy(clients),
        lambda p: resourcemanager.set_iam_policy(clients, p),
        remove=desired.project_bindings(cfg) + desired.builder_project_bindings(cfg),
    )
    done(bool(removed), f"project role bindings of {cfg.server_service_account_email} "
                        f"and {cfg.builder_service_account_email}")
    for secret_id in (cfg.secret_id, cfg.gateway_secret_id):  # the gateway's, if it was ever on
        if secretmanager.get_secret(clients, secret_id) is not None:
            done(secretmanager.delete_secret(clients, secret_id), f"secret {secret_id}")

    instance = sql.get_instance(clients, cfg.database.instance)
    if instance is not None:
        if (instance.get("settings") or {}).get("deletionProtectionEnabled"):
            ctx.say(f"turning off deletion protection of {cfg.database.instance}")
            sql.patch_instance(clients, cfg.database.instance, {"settings": {"deletionProtectionEnabled": False}},
                               progress=ctx.progress)
        if backup:
            ctx.say(f"deleting {cfg.database.instance} with a final backup (kept {FINAL_BACKUP_DAYS} days)")
        done(sql.delete_instance(clients, cfg.database.instance,
                                 final_backup_days=FINAL_BACKUP_DAYS if backup else None, progress=ctx.progress),
             f"Cloud SQL instance {cfg.database.instance} (and its automated backups)")
        if backup:
            out.kept.append(
                f"final backup of {cfg.database.instance} for {FINAL_BACKUP_DAYS} days "
                f"(gcloud sql backups list --project {cfg.project})"
            )

    if keep_bucket:
        if storage.get_bucket(clients, cfg.bucket_name) is not None:
            iampolicy.ensure(
                lambda: storage.get_iam_policy(clients, cfg.bucket_name),
                lambda p: storage.set_iam_policy(clients, cfg.bucket_name, p),
                remove=desired.bucket_bindings(cfg) + desired.builder_bucket_bindings(cfg),
            )
            out.kept.append(f"bucket gs://{cfg.bucket_name} and its artifacts (--keep-bucket)")
    elif storage.get_bucket(clients, cfg.bucket_name) is not None:
        done(storage.delete_bucket(clients, cfg.bucket_name),
             f"bucket gs://{cfg.bucket_name} (objects recoverable during its soft-delete period)")
    if iam.get_service_account(clients, cfg.server_service_account_email) is not None:
        done(iam.delete_service_account(clients, cfg.server_service_account_email),
             f"service account {cfg.server_service_account_email}")
    if iam.get_service_account(clients, cfg.builder_service_account_email) is not None:
        done(iam.delete_service_account(clients, cfg.builder_service_account_email),
             f"service account {cfg.builder_service_account_email}")
    if out.deleted:
        out.kept.append("enabled APIs (disabling them could break other workloads in the project)")
    return out
