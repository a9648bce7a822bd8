"""The resources of a deployment, in dependency order: each step reads what exists, decides what
to do (inspect) and does it (apply). `up` re-inspects every step right before applying it, so a run
interrupted anywhere picks up from what is really there.
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow_gcp.config import Config
from mlflow_gcp.errors import ApiDisabled, Conflict, NotFound, PermissionDenied
from mlflow_gcp.gcp import (
    artifactregistry,
    iam,
    iampolicy,
    resourcemanager,
    run,
    secretmanager,
    serviceusage,
    sql,
    storage,
)
from mlflow_gcp.gcp.errors import InvalidRequest
from mlflow_gcp.plan import desired
from mlflow_gcp.plan.diff import Change, diff
from mlflow_gcp.plan.model import CREATE, DELETE, NONE, RUN, UPDATE, Action

# Secret annotation naming the instance/user whose password was set from this secret; without it
# an existing user is "adopted" by setting its password from the secret.
SYNCED_ANNOTATION = "mlflow-gcp-password-set-on"
# A new service account takes a few seconds to be visible to IAM policies.
_IAM_PROPAGATION_TRIES = 6
_IAM_PROPAGATION_DELAY = 5.0


@dataclass
class Context:
    cfg: Config
    clients: Any
    say: Callable[[str], None] = lambda line: None
    progress: Callable[[str, float], None] | None = None
    facts: dict = field(default_factory=dict)
    applying: bool = False  # False while planning: never wait, never write

    @property
    def project_number(self) -> str | None:
        if "project_number" not in self.facts:
            try:
                self.facts["project_number"] = resourcemanager.project_number(self.clients)
            except ApiDisabled:
                return None
        return self.facts["project_number"]

    @property
    def image(self) -> str:
        """The image the job and service run: pinned by digest once known."""
        return self.facts.get("image") or self.cfg.image_uri


class Step:
    key = ""
    kind = ""

    def name(self, ctx: Context) -> str:
        raise NotImplementedError

    def inspect(self, ctx: Context) -> Action:
        raise NotImplementedError

    def apply(self, ctx: Context, action: Action) -> None:
        raise NotImplementedError

    def action(self, ctx: Context, verb: str, **kw) -> Action:
        return Action(self.key, self.kind, self.name(ctx), verb, **kw)


class Apis(Step):
    key, kind = "apis", "APIs"

    def name(self, ctx):
        return f"{len(desired.REQUIRED_SERVICES)} services"

    def inspect(self, ctx):
        try:
            missing = serviceusage.disabled(ctx.clients, list(desired.REQUIRED_SERVICES))
        except PermissionDenied:
            # Many deployers may use APIs without being allowed to list them; a disabled one still
            # surfaces later as ApiDisabled, naming it.
            return self.action(ctx, NONE, detail="not checked: no permission to list enabled APIs")
        if not missing:
            return self.action(ctx, NONE)
        return self.action(ctx, UPDATE, detail="enable " + ", ".join(missing), data={"missing": missing})

    def apply(self, ctx, action):
        serviceusage.enable(ctx.clients, action.data["missing"], progress=ctx.progress)


class ServiceAccount(Step):
    key, kind = "service_account", "service account"

    def name(self, ctx):
        return ctx.cfg.server_service_account_email

    def inspect(self, ctx):
        if iam.get_service_account(ctx.clients, self.name(ctx)) is None:
            return self.action(ctx, CREATE)
        return self.action(ctx, NONE)

    def apply(self, ctx, action):
        body = desired.service_account(ctx.cfg)
        iam.create_service_account(ctx.clients, ctx.cfg.service.service_account, body["displayName"], body["description"])


class Secret(Step):
    key, kind = "secret", "secret"

    def name(self, ctx):
        return ctx.cfg.secret_id

    def inspect(self, ctx):
        current = secretmanager.get_secret(ctx.clients, ctx.cfg.secret_id)
        ctx.facts["secret"] = current
        if current is None:
            return self.action(ctx, CREATE)
        changes = diff({"labels": ctx.cfg.all_labels}, current)
        return self.action(ctx, UPDATE if changes else NONE, changes=changes, current=current)

    def apply(self, ctx, action):
        if action.verb == CREATE:
            secretmanager.create_secret(ctx.clients, ctx.cfg.secret_id, ctx.cfg.all_labels)
        else:
            labels = {**(action.current.get("labels") or {}), **ctx.cfg.all_labels}
            secretmanager.patch_labels(ctx.clients, ctx.cfg.secret_id, labels)


class SecretVersion(Step):
    key, kind = "password", "database password"

    def name(self, ctx):
        return f"{ctx.cfg.secret_id} (Secret Manager only)"

    def inspect(self, ctx):
        try:
            has = secretmanager.has_enabled_version(ctx.clients, ctx.cfg.secret_id)
        except NotFound:
            has = False
        ctx.facts["password_missing"] = not has
        if has:
            return self.action(ctx, NONE)
        return self.action(ctx, CREATE, detail="generate a password and store it as a secret version")

    def apply(self, ctx, action):
        password = _secrets.token_urlsafe(32)
        secretmanager.add_version(ctx.clients, ctx.cfg.secret_id, password)
        ctx.facts["password"] = password
        ctx.facts["password_missing"] = False


class SqlInstance(Step):
    key, kind = "sql_instance", "Cloud SQL instance"

    def name(self, ctx):
        return ctx.cfg.database.instance

    def inspect(self, ctx):
        want = desired.sql_instance(ctx.cfg)
        current = sql.get_instance(ctx.clients, want["name"])
        ctx.facts["sql_instance_exists"] = current is not None
        if current is None:
            return self.action(ctx, CREATE, detail=f"{want['databaseVersion']} {want['settings']['tier']} in {ctx.cfg.region}")
        if ctx.applying:  # not while planning: settle what another run started
            current = sql.wait_ready(ctx.clients, want["name"], current, progress=ctx.progress)
        if current.get("state") in ("FAILED", "SUSPENDED"):
            raise Conflict(
                f"Cloud SQL instance {want['name']} is {current['state']}"
                + (" (its creation failed)" if current["state"] == "FAILED" else ""),
                hint=f"delete it (gcloud sql instances delete {want['name']} --project {ctx.cfg.project}) "
                "and rerun, or choose another name with --set database.instance=NAME",
            )
        incompatible = [
            f"{k} is {current.get(k)}, not {want[k]}" for k in desired.SQL_IMMUTABLE if current.get(k) != want[k]
        ]
        if incompatible:
            upgrade = (str(current.get("databaseVersion", "")).startswith("POSTGRES_")
                       and current.get("region") == want["region"])
            raise Conflict(
                f"Cloud SQL instance {want['name']} exists but cannot be adopted: " + "; ".join(incompatible),
                hint=(f"`up` does not change PostgreSQL major versions; set database.version = "
                      f"\"{current.get('databaseVersion')}\", or upgrade the instance first"
                      if upgrade else
                      "choose another name with --set database.instance=NAME, or delete that instance"),
            )
        ignore = desired.SQL_CREATE_ONLY | {"name", "project"}
        changes = diff(want, current, ignore=ignore, labels=desired.FIELD_LABELS)
        return self.action(ctx, UPDATE if changes else NONE, changes=changes, current=current)

    def apply(self, ctx, action):
        want = desired.sql_instance(ctx.cfg)
        if action.verb == CREATE:
            sql.create_instance(ctx.clients, want, progress=ctx.progress)
            return
        sections = {c.path.split(".")[1].split("[")[0] for c in action.changes if c.path.startswith("settings.")}
        settings = {k: want["settings"][k] for k in sections}
        if "userLabels" in settings:
            settings["userLabels"] = {**(action.current["settings"].get("userLabels") or {}), **settings["userLabels"]}
        sql.patch_instance(ctx.clients, want["name"], {"settings": settings}, progress=ctx.progress)


class SqlDatabase(Step):
    key, kind = "sql_database", "database"

    def name(self, ctx):
        return f"{ctx.cfg.database.instance}/{ctx.cfg.database.database}"

    def inspect(self, ctx):
        if ctx.facts.get("sql_instance_exists") is False:
            return self.action(ctx, CREATE)
        found = sql.get_database(ctx.clients, ctx.cfg.database.instance, ctx.cfg.database.database)
        return self.action(ctx, CREATE if found is None else NONE)

    def apply(self, ctx, action):
        sql.create_database(ctx.clients, ctx.cfg.database.instance, ctx.cfg.database.database, progress=ctx.progress)


class SqlUser(Step):
    key, kind = "sql_user", "database user"

    def name(self, ctx):
        return f"{ctx.cfg.database.instance}/{ctx.cfg.database.user}"

    def _marker(self, ctx) -> str:
        return f"{ctx.cfg.database.instance}.{ctx.cfg.database.user}"

    def inspect(self, ctx):
        db = ctx.cfg.database
        user = None if ctx.facts.get("sql_instance_exists") is False else sql.get_user(ctx.clients, db.instance, db.user)
        secret = ctx.facts.get("secret") or {}
        synced = (secret.get("annotations") or {}).get(SYNCED_ANNOTATION) == self._marker(ctx)
        if user is None:
            return self.action(ctx, CREATE, data={"exists": False})
        if ctx.facts.get("password_missing") or ctx.facts.get("password") or not synced:
            return self.action(ctx, UPDATE, detail="set its password from the secret", data={"exists": True})
        return self.action(ctx, NONE)

    def apply(self, ctx, action):
        db = ctx.cfg.database
        password = ctx.facts.get("password") or secretmanager.access_latest(ctx.clients, ctx.cfg.secret_id)
        created = not action.data["exists"] and sql.create_user(
            ctx.clients, db.instance, db.user, password, progress=ctx.progress
        )
        if not created:  # adopted, or created meanwhile by another run: its password is unknown
            sql.set_password(ctx.clients, db.instance, db.user, password, progress=ctx.progress)
        secret = secretmanager.get_secret(ctx.clients, ctx.cfg.secret_id) or {}
        annotations = {**(secret.get("annotations") or {}), SYNCED_ANNOTATION: self._marker(ctx)}
        secretmanager.patch_annotations(ctx.clients, ctx.cfg.secret_id, annotations)
        ctx.facts["secret"] = {**secret, "annotations": annotations}
        ctx.facts.pop("password", None)


class Bucket(Step):
    key, kind = "bucket", "bucket"

    def name(self, ctx):
        return ctx.cfg.bucket_name

    def inspect(self, ctx):
        want = desired.bucket(ctx.cfg)
        current = storage.get_bucket(ctx.clients, want["name"])
        if current is None:
            return self.action(ctx, CREATE, detail=f"in {want['location']}")
        if str(current.get("location", "")).upper() != want["location"]:
            raise Conflict(
                f"bucket {want['name']} exists in {current.get('location')}, not {want['location']}",
                hint="set artifacts.location to match, or artifacts.bucket to another name",
            )
        ignore = desired.BUCKET_CREATE_ONLY | {"name", "location"}
        changes = diff(want, current, ignore=ignore, labels=desired.FIELD_LABELS)
        return self.action(ctx, UPDATE if changes else NONE, changes=changes, current=current)

    def apply(self, ctx, action):
        want = desired.bucket(ctx.cfg)
        if action.verb == CREATE:
            storage.create_bucket(ctx.clients, want)
            return
        keys = {c.path.split(".")[0].split("[")[0] for c in action.changes}
        storage.patch_bucket(ctx.clients, want["name"], {k: want[k] for k in keys})


class IamBindings(Step):
    """Bindings on one resource's IAM policy: read, compare, write only when one is missing."""

    kind = "IAM binding"

    def __init__(self, key: str, label: Callable[[Config], str], get, set_, wanted, unwanted=None):
        self.key = key
        self._label, self._get, self._set = label, get, set_
        self._wanted, self._unwanted = wanted, unwanted or (lambda cfg: [])

    def name(self, ctx):
        return self._label(ctx.cfg)

    def _policy(self, ctx) -> dict:
        try:
            return self._get(ctx)
        except NotFound:
            return {}

    def inspect(self, ctx):
        policy = self._policy(ctx)
        add = iampolicy.missing(policy, self._wanted(ctx.cfg))
        remove = iampolicy.present(policy, self._unwanted(ctx.cfg))
        changes = [Change(role, None, member) for role, member in add]
        changes += [Change(role, member, None) for role, member in remove]
        if not changes:
            return self.action(ctx, NONE)
        verb = DELETE if not add else (CREATE if not remove else UPDATE)
        detail = "; ".join([f"grant {r} to {m}" for r, m in add] + [f"remove {r} from {m}" for r, m in remove])
        return self.action(ctx, verb, changes=changes, detail=detail)

    def apply(self, ctx, action):
        for attempt in range(_IAM_PROPAGATION_TRIES):
            try:
                iampolicy.ensure(
                    lambda: self._policy(ctx), lambda p: self._set(ctx, p),
                    self._wanted(ctx.cfg), self._unwanted(ctx.cfg),
                )
                return
            except InvalidRequest as err:
                # A service account created seconds ago is not yet known to IAM everywhere.
                if "does not exist" not in str(err) or attempt == _IAM_PROPAGATION_TRIES - 1:
                    raise
                ctx.clients.sleep(_IAM_PROPAGATION_DELAY)


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
        return self.action(ctx, NONE)

    def apply(self, ctx, action):
        artifactregistry.create_repository(
            ctx.clients, ctx.cfg.region, ctx.cfg.service.repository, desired.repository(ctx.cfg), progress=ctx.progress
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
    key, kind = "migrate", "schema migration"

    def name(self, ctx):
        return ctx.cfg.migrate_job_name

    def inspect(self, ctx):
        raw = run.get_service_raw(ctx.clients, ctx.cfg.region, ctx.cfg.service.name)
        if _service_image(raw) == ctx.image:
            return self.action(ctx, NONE)
        return self.action(ctx, RUN, detail="run the job (mlflow db upgrade) before the new image rolls out")

    def apply(self, ctx, action):
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
            return self.action(ctx, CREATE, detail=f"{svc.min_instances}..{svc.max_instances} instances, {ctx.cfg.access.mode}")
        changes = diff(self._want(ctx, raw), raw, labels=desired.FIELD_LABELS)
        return self.action(ctx, UPDATE if changes else NONE, changes=changes, current=raw)

    def apply(self, ctx, action):
        cfg, clients = ctx.cfg, ctx.clients
        want = self._want(ctx, action.current)
        if action.verb == CREATE:
            run.create_service(clients, cfg.region, cfg.service.name, want, progress=ctx.progress)
        else:
            want["labels"] = {**(action.current.get("labels") or {}), **want["labels"]}
            run.update_service(clients, cfg.region, cfg.service.name, want, progress=ctx.progress)
        # The service's URLs are known only once it exists: allow its own hosts too.
        raw = run.get_service_raw(clients, cfg.region, cfg.service.name)
        again = self._want(ctx, raw)
        if raw is not None and diff(again, raw):
            ctx.say("  adding the service's own URL to its allowed hosts")
            again["labels"] = {**(raw.get("labels") or {}), **again["labels"]}
            run.update_service(clients, cfg.region, cfg.service.name, again, progress=ctx.progress)


def steps() -> list[Step]:
    """Every step, in the order `up` applies them (destroy goes the other way)."""
    return [
        Apis(),
        ServiceAccount(),
        Secret(),
        SecretVersion(),
        SqlInstance(),
        SqlDatabase(),
        SqlUser(),
        Bucket(),
        IamBindings(
            "bucket_iam", lambda c: f"bucket {c.bucket_name}",
            lambda ctx: storage.get_iam_policy(ctx.clients, ctx.cfg.bucket_name),
            lambda ctx, p: storage.set_iam_policy(ctx.clients, ctx.cfg.bucket_name, p),
            desired.bucket_bindings,
        ),
        IamBindings(
            "secret_iam", lambda c: f"secret {c.secret_id}",
            lambda ctx: secretmanager.get_iam_policy(ctx.clients, ctx.cfg.secret_id),
            lambda ctx, p: secretmanager.set_iam_policy(ctx.clients, ctx.cfg.secret_id, p),
            desired.secret_bindings,
        ),
        IamBindings(
            "project_iam", lambda c: f"project {c.project}",
            lambda ctx: resourcemanager.get_iam_policy(ctx.clients),
            lambda ctx, p: resourcemanager.set_iam_policy(ctx.clients, p),
            desired.project_bindings,
        ),
        IamBindings(
            "sa_iam", lambda c: f"service account {c.service.service_account}",
            lambda ctx: iam.get_iam_policy(ctx.clients, ctx.cfg.server_service_account_email),
            lambda ctx, p: iam.set_iam_policy(ctx.clients, ctx.cfg.server_service_account_email, p),
            desired.sa_self_bindings,
        ),
        Repository(),
        Image(),
        MigrationJob(),
        Migrate(),
        Service(),
        IamBindings(
            "invokers", lambda c: f"service {c.service.name} (invokers)",
            lambda ctx: run.get_service_iam_policy(ctx.clients, ctx.cfg.region, ctx.cfg.service.name),
            lambda ctx, p: run.set_service_iam_policy(ctx.clients, ctx.cfg.region, ctx.cfg.service.name, p),
            lambda cfg: desired.invoker_bindings(cfg)[0],
            lambda cfg: desired.invoker_bindings(cfg)[1],
        ),
    ]
