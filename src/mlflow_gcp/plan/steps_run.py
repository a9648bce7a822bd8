"""Steps for what runs: the image (repository and build), the migration job and its execution,
and the Cloud Run service."""

from __future__ import annotations

from mlflow_gcp.config import Config
from mlflow_gcp.errors import Conflict, NotFound
from mlflow_gcp.gcp import artifactregistry, run, sqlbackup
from mlflow_gcp.plan import desired
from mlflow_gcp.plan.context import Step
from mlflow_gcp.plan.diff import diff
from mlflow_gcp.plan.model import CREATE, NONE, RUN, UPDATE


class Repository(Step):
    key, kind = "repository", "Artifact Registry repository"

    def name(self, ctx):
        return f"{ctx.cfg.region}/{ctx.cfg.service.repository}"

    def inspect(self, ctx):
        if ctx.cfg.service.image:
            return self.action(ctx, NONE, detail="not needed: service.image is set")
        current = artifactregistry.get_repository(ctx.clients, ctx.cfg.region, ctx.cfg.service.repository)
        if current is None:
            return self.action(ctx, CREATE)
        if current.get("format") != "DOCKER":
            raise Conflict(
                f"repository {ctx.cfg.service.repository} exists with format {current.get('format')}, not DOCKER",
                hint="set service.repository to another name",
            )
        # Compared field by field: cleanup policies someone else added under other ids are theirs.
        want = desired.repository_cleanup(ctx.cfg)
        changes = diff(want, current, labels=desired.FIELD_LABELS)
        if not changes:
            return self.action(ctx, NONE)
        return self.action(ctx, UPDATE, changes=changes, current=current)

    def apply(self, ctx, action):
        if action.verb == CREATE:
            artifactregistry.create_repository(
                ctx.clients, ctx.cfg.region, ctx.cfg.service.repository, desired.repository(ctx.cfg),
                progress=ctx.progress,
            )
            return
        want = desired.repository_cleanup(ctx.cfg)
        # The mask replaces the whole map, so the policies of other ids go back unchanged.
        policies = {**(action.current.get("cleanupPolicies") or {}), **want["cleanupPolicies"]}
        artifactregistry.patch_repository(
            ctx.clients, ctx.cfg.region, ctx.cfg.service.repository,
            {**want, "cleanupPolicies": policies}, ["cleanupPolicies", "cleanupPolicyDryRun"],
        )


def _image_parts(cfg: Config) -> tuple[str, str]:
    path, tag = cfg.image_uri.rsplit(":", 1)
    return path.rsplit("/", 1)[-1], tag


class Image(Step):
    key, kind = "image", "image"

    def name(self, ctx):
        return ctx.cfg.image_uri

    def inspect(self, ctx):
        if ctx.cfg.service.image:
            ctx.facts["image"] = ctx.cfg.service.image
            return self.action(ctx, NONE)
        package, tag = _image_parts(ctx.cfg)
        try:
            digest = artifactregistry.tag_digest(ctx.clients, ctx.cfg.region, ctx.cfg.service.repository, package, tag)
        except NotFound:
            digest = None
        if digest is None:
            return self.action(ctx, CREATE, detail="build on Cloud Build from the packaged Dockerfile")
        ctx.facts["image"] = f"{ctx.cfg.image_uri}@{digest}"
        ctx.facts["digest"] = digest
        return self.action(ctx, NONE)

    def apply(self, ctx, action):
        from mlflow_gcp.ops import image as image_ops

        digest = image_ops.build(ctx)
        if digest:
            ctx.facts["image"] = f"{ctx.cfg.image_uri}@{digest}"
            ctx.facts["digest"] = digest


class MigrationJob(Step):
    key, kind = "job", "Cloud Run job"

    def name(self, ctx):
        return ctx.cfg.migrate_job_name

    def inspect(self, ctx):
        want = desired.job(ctx.cfg, ctx.image)
        current = run.get_job(ctx.clients, ctx.cfg.region, ctx.cfg.migrate_job_name)
        if current is None:
            return self.action(ctx, CREATE, detail="runs `python -m mlflow_gcp.server migrate`")
        changes = diff(want, current, labels=desired.FIELD_LABELS)
        return self.action(ctx, UPDATE if changes else NONE, changes=changes, current=current)

    def apply(self, ctx, action):
        want = desired.job(ctx.cfg, ctx.image)
        if action.verb == CREATE:
            run.create_job(ctx.clients, ctx.cfg.region, ctx.cfg.migrate_job_name, want, progress=ctx.progress)
        else:
            want["labels"] = {**(action.current.get("labels") or {}), **want["labels"]}
            run.update_job(ctx.clients, ctx.cfg.region, ctx.cfg.migrate_job_name, want, progress=ctx.progress)


def _service_image(raw: dict | None) -> str | None:
    if not raw:
        return None
    containers = (raw.get("template") or {}).get("containers") or [{}]
    return containers[0].get("image")


class Migrate(Step):
    """Run the migration job before a new image rolls out; first an on-demand backup when the
    job may upgrade a schema that holds data (one-way: the old MLflow cannot open it after)."""

    key, kind = "migrate", "schema migration"

    def name(self, ctx):
        return ctx.cfg.migrate_job_name

    def inspect(self, ctx):
        raw = run.get_service_raw(ctx.clients, ctx.cfg.region, ctx.cfg.service.name)
        if _service_image(raw) == ctx.image:
            return self.action(ctx, NONE)
        old_image = _service_image(raw)
        containers = ((raw or {}).get("template") or {}).get("containers") or [{}]
        old = desired.mlflow_version_of(old_image, containers[0].get("env"))
        new = ctx.cfg.service.mlflow_version
        if not self._holds_data(ctx, raw) or old == new:
            return self.action(ctx, RUN, detail="run the job (mlflow db upgrade) before the new image rolls out")
        served = (f"MLflow {old}" if old else f"an MLflow of unknown version (image {old_image})" if old_image
                  else "the MLflow that made the database")
        db = ctx.cfg.database
        note = (f"the job may upgrade the existing schema of {db.instance}/{db.database} from {served} to "
                f"MLflow {new}: one-way, the old MLflow cannot open the database afterwards "
                "(\"Can't locate revision\"); the job's log names both schema revisions. `up` takes an "
                f"on-demand backup first; to roll back, `mlflow-gcp backup restore BACKUP_ID` (the id is "
                "printed) and deploy the old image again"
                + (f" ({old_image})" if old_image else "")
                + ". Between the migration and the new revision being ready the old server may fail: "
                "expect a few minutes of downtime.")
        return self.action(ctx, RUN, data={"backup": True, "from": served},
                           detail=f"back up {db.instance}, then run the job (mlflow db upgrade) before the "
                                  "new image rolls out", notes=[note])

    @staticmethod
    def _holds_data(ctx, service_raw) -> bool:
        """Whether the database may hold a schema with data that this job would upgrade: it
        existed before this run and something served from it (a service, or an earlier
        successful migration), unless this very image already migrated it (a rerun)."""
        if not ctx.facts.get("database_existed"):
            return False
        migrated_with = run.last_succeeded_image(ctx.clients, ctx.cfg.region, ctx.cfg.migrate_job_name)
        if migrated_with == ctx.image:
            return False
        return service_raw is not None or migrated_with is not None

    def apply(self, ctx, action):
        if action.data.get("backup"):
            instance = ctx.cfg.database.instance
            ctx.say(f"  backing up {instance} first (the schema migration cannot be undone)")
            # The same call `upgrade` uses: it raises unless the backup really succeeded.
            backup = sqlbackup.create_backup(
                ctx.clients, instance,
                f"before migrating the MLflow schema from {action.data['from']} to MLflow "
                f"{ctx.cfg.service.mlflow_version}", progress=ctx.progress)
            ctx.facts["backup_id"] = backup["id"]
            ctx.say(f"  backup {backup['id']} taken; to roll back: mlflow-gcp backup restore {backup['id']}")
        run.run_job(ctx.clients, ctx.cfg.region, ctx.cfg.migrate_job_name, progress=ctx.progress)


def _urls(raw: dict | None) -> list[str]:
    if not raw:
        return []
    return list(raw.get("urls") or []) + ([raw["uri"]] if raw.get("uri") else [])


class Service(Step):
    key, kind = "service", "Cloud Run service"

    def name(self, ctx):
        return ctx.cfg.service.name

    def _want(self, ctx, raw):
        hosts = desired.allowed_hosts(ctx.cfg, ctx.project_number, _urls(raw))
        return desired.service(ctx.cfg, ctx.image, hosts)

    def inspect(self, ctx):
        raw = run.get_service_raw(ctx.clients, ctx.cfg.region, ctx.cfg.service.name)
        if raw is None:
            svc = ctx.cfg.service
            access = "public: Cloud Run's invoker check off" if ctx.cfg.access.mode == "public" else "private"
            return self.action(ctx, CREATE, detail=f"{svc.min_instances}..{svc.max_instances} instances, {access}")
        changes = diff(self._want(ctx, raw), raw, labels=desired.FIELD_LABELS)
        if not ctx.applying:  # a plan shows what the budget step does before the database once
            first = ctx.facts.get("service_budget_first") or ()
            changes = [c for c in changes if c.path not in first]
        return self.action(ctx, UPDATE if changes else NONE, changes=changes, current=raw)

    def apply(self, ctx, action):
        cfg, clients = ctx.cfg, ctx.clients
        want = self._want(ctx, action.current)
        if action.verb == CREATE:
            run.create_service(clients, cfg.region, cfg.service.name, want, progress=ctx.progress)
        else:
            run.update_service(clients, cfg.region, cfg.service.name, _keeping(want, action.current),
                               progress=ctx.progress)
        # The service's URLs are known only once it exists: allow its own hosts too.
        raw = run.get_service_raw(clients, cfg.region, cfg.service.name)
        again = self._want(ctx, raw)
        if raw is not None and diff(again, raw):
            ctx.say("  adding the service's own URL to its allowed hosts")
            run.update_service(clients, cfg.region, cfg.service.name, _keeping(again, raw), progress=ctx.progress)


def _keeping(want: dict, current: dict) -> dict:
    """`want` plus the labels and annotations others set: a v2 patch replaces what it is not sent
    (the annotations hold, among others, the invokers record of plan/invokers.py)."""
    out = {**want, "labels": {**(current.get("labels") or {}), **want["labels"]}}
    if current.get("annotations"):
        out["annotations"] = dict(current["annotations"])
    return out
