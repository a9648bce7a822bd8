"""`upgrade --mlflow-version X`: backup, build, migrate, roll out, smoke-test, roll back if unhealthy.

Order matters: the backup comes before the migration (a schema migration cannot be undone), the
migration runs once as the Cloud Run job before any instance of the new version starts (the server
refuses an out-of-date schema and never migrates itself), and the previous revision stays
deployed so that traffic can go back to it in one API call when the new one fails its rollout or
its smoke test (/health, an authenticated MLflow API call and MLflow's /version, which must name
the version asked for, all with an ID token).

A smoke test that could not run (no ID token, or an emulated API without --url) is not a pass:
the new revision keeps the traffic (nothing says it is broken) but the result says its health was
not verified, why, and how to verify it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_gcp import config as config_mod
from mlflow_gcp.errors import GcpError, MlflowGcpError
from mlflow_gcp.gcp import run, runrevisions, sqlbackup
from mlflow_gcp.ops import live, status
from mlflow_gcp.plan import desired
from mlflow_gcp.plan import steps as steps_mod
from mlflow_gcp.plan.model import NONE

TOTAL = 5

# Upgrade cannot rerun its smoke test (the version is then already served); these can.
VERIFY_HINT = ("verify it now with `mlflow-gcp doctor` (health and schema at head) or `mlflow-gcp status`, "
               "where an ID token can be minted (`mlflow-gcp env` lists the token sources), or add "
               "--url URL to check through an address you can reach")


class UpgradeFailed(MlflowGcpError):
    """The new revision was unhealthy; traffic is back on the previous one."""


@dataclass
class UpgradeResult:
    version: str
    previous_version: str | None
    previous_revision: str | None
    backup_id: str | None = None
    revision: str | None = None
    health: str = ""
    rolled_back: bool = False
    saved_to: str | None = None
    unchanged: bool = False
    # Unchanged MLflow, but the served image was built from another mlflow-gcp source.
    other_source: bool = False
    # True only when the smoke test ran and passed; a skipped one leaves it False.
    verified: bool = False

    @property
    def outcome(self) -> str:
        if self.unchanged:
            return "unchanged"
        return "upgraded" if self.verified else "upgraded, not verified"


def target_config(cfg, version: str):
    if cfg.service.image:
        raise MlflowGcpError(
            "service.image is set, so mlflow-gcp does not build the image",
            hint="build an image with the new MLflow, set service.image to it and run `mlflow-gcp up`",
        )
    data = cfg.model_dump()
    data["service"]["mlflow_version"] = version
    try:
        return config_mod.from_dict(data)
    except config_mod.ConfigError as err:
        raise config_mod.ConfigError([("mlflow-version", msg) for _, msg in err.problems]) from None


def _apply_step(step, ctx) -> None:
    action = step.inspect(ctx)
    if action.verb != NONE:
        step.apply(ctx, action)


def upgrade(ctx, version: str, *, url: str | None = None, config_file=None) -> UpgradeResult:
    cfg = ctx.cfg
    new_cfg = target_config(cfg, version)
    raw = run.get_service_raw(ctx.clients, cfg.region, cfg.service.name)
    if raw is None:
        raise MlflowGcpError(f"Cloud Run service {cfg.service.name} is not deployed", hint=live.NOT_DEPLOYED_HINT)
    old_image = (((raw.get("template") or {}).get("containers") or [{}])[0]).get("image")
    previous = (raw.get("latestReadyRevision") or "").rsplit("/", 1)[-1] or None
    result = UpgradeResult(version, status.mlflow_version_of(old_image), previous)
    if result.previous_version == version:
        result.unchanged = True
        result.other_source = not new_cfg.service.image and (old_image or "").split("@", 1)[0] != new_cfg.image_uri
        return result
    if previous is None:
        raise MlflowGcpError(f"{cfg.service.name} has no ready revision to come back to",
                             hint="run `mlflow-gcp up` and check `mlflow-gcp status` first")
    live.require_running(ctx, "an upgrade")
    say = ctx.say

    say(f"[1/{TOTAL}] backing up {cfg.database.instance} (the migration cannot be undone)")
    backup = sqlbackup.create_backup(ctx.clients, cfg.database.instance,
                                     f"before upgrading MLflow {result.previous_version} -> {version}",
                                     progress=ctx.progress)
    result.backup_id = backup["id"]

    new_ctx = steps_mod.Context(new_cfg, ctx.clients, say=say, progress=ctx.progress, applying=True)
    say(f"[2/{TOTAL}] image {new_cfg.image_uri}")
    _apply_step(steps_mod.Image(), new_ctx)

    say(f"[3/{TOTAL}] migrating the schema with job {cfg.migrate_job_name} (mlflow db upgrade)")
    _apply_step(steps_mod.MigrationJob(), new_ctx)
    try:
        run.run_job(ctx.clients, cfg.region, cfg.migrate_job_name, progress=ctx.progress)
    except GcpError as err:
        _restore_job(ctx, old_image)
        raise UpgradeFailed(
            f"the schema migration to MLflow {version} failed, nothing was rolled out: {err.message}",
            hint=f"MLflow {result.previous_version} still serves; if it cannot use the database now, "
                 f"`mlflow-gcp backup restore {result.backup_id}` returns to the pre-upgrade database",
        ) from err

    say(f"[4/{TOTAL}] rolling out {cfg.service.name} with MLflow {version}")
    try:
        _apply_step(steps_mod.Service(), new_ctx)
    except GcpError as err:
        return _rollback(ctx, result, old_image, f"the rollout failed: {err.message}")
    after = run.get_service_raw(ctx.clients, cfg.region, cfg.service.name) or {}
    revision = (after.get("latestReadyRevision") or "").rsplit("/", 1)[-1] or None
    result.revision = revision
    if revision == previous or not runrevisions.revision_ready(
            runrevisions.get_revision(ctx.clients, cfg.region, cfg.service.name, revision or "")):
        return _rollback(ctx, result, old_image, "the new revision did not become ready")

    say(f"[5/{TOTAL}] smoke test of {revision}")
    # The image's tag names the version asked for; only the revision itself can say what it runs.
    checked = live.probe(ctx, url, after.get("uri"), version=version)
    result.health = checked.message
    if checked.ok is False:
        return _rollback(ctx, result, old_image, checked.message)
    result.verified = checked.ok is True
    if config_file is not None and live.save_settings(config_file, {("service", "mlflow_version"): version}):
        result.saved_to = str(config_file)
    return result


def _restore_job(ctx, old_image: str | None) -> None:
    # The job must migrate with the MLflow that serves, not the one that was rolled back.
    if old_image:
        cfg = ctx.cfg
        run.update_job(ctx.clients, cfg.region, cfg.migrate_job_name, desired.job(cfg, old_image),
                       progress=ctx.progress)


def _rollback(ctx, result: UpgradeResult, old_image: str | None, reason: str) -> UpgradeResult:
    cfg = ctx.cfg
    ctx.say(f"unhealthy ({reason}): sending all traffic back to {result.previous_revision}")
    runrevisions.pin_traffic(ctx.clients, cfg.region, cfg.service.name, result.previous_revision,
                             progress=ctx.progress)
    _restore_job(ctx, old_image)
    result.rolled_back = True
    result.health = reason
    raise UpgradeFailed(
        f"upgrade to MLflow {result.version} rolled back: {reason}; all traffic is on "
        f"{result.previous_revision} (MLflow {result.previous_version})",
        hint=(f"if the migration changed the schema, the previous version may refuse it on a cold start: "
              f"`mlflow-gcp backup restore {result.backup_id}` returns to the pre-upgrade database"),
    )
