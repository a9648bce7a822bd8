"""The resources of a deployment, in dependency order: each step reads what exists, decides what
to do (inspect) and does it (apply). `up` re-inspects every step right before applying it, so a run
interrupted anywhere picks up from what is really there.

Database steps live in steps_db.py, the image/job/service steps in steps_run.py, the service's
invokers in invokers.py.
"""

from __future__ import annotations

from collections.abc import Callable

from mlflow_gcp.config import Config
from mlflow_gcp.errors import Conflict, NotFound, PermissionDenied
from mlflow_gcp.gcp import artifactregistry, iam, iampolicy, resourcemanager, secretmanager, serviceusage, storage
from mlflow_gcp.plan import adopt, desired
from mlflow_gcp.plan.context import Context, Step, ensure_bindings
from mlflow_gcp.plan.diff import Change, diff
from mlflow_gcp.plan.invokers import Invokers
from mlflow_gcp.plan.steps_budget import ServiceBudgetFirst
from mlflow_gcp.plan.model import CREATE, DELETE, NONE, UPDATE
from mlflow_gcp.plan.steps_db import (
    GatewayPassphrase, GatewaySecret, Secret, SecretVersion, SqlDatabase, SqlInstance, SqlUser,
)
from mlflow_gcp.plan.steps_run import Image, MigrationJob, Migrate, Repository, Service

__all__ = ["Context", "Step", "steps"]


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


class BuilderAccount(Step):
    """The account Cloud Build builds as; only needed when `up` builds the image."""

    key, kind = "builder_account", "service account"

    def name(self, ctx):
        return ctx.cfg.builder_service_account_email

    def inspect(self, ctx):
        if not desired.builds_image(ctx.cfg):
            return self.action(ctx, NONE, detail="not needed: service.image is set")
        if iam.get_service_account(ctx.clients, self.name(ctx)) is None:
            return self.action(ctx, CREATE, detail="builds the image on Cloud Build")
        return self.action(ctx, NONE)

    def apply(self, ctx, action):
        body = desired.builder_service_account(ctx.cfg)
        iam.create_service_account(ctx.clients, ctx.cfg.service.build_service_account, body["displayName"],
                                   body["description"])


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
        note = adopt.lifecycle_note(ctx.cfg, (current.get("lifecycle") or {}).get("rule") or [],
                                    want["lifecycle"]["rule"])
        return self.action(ctx, UPDATE if changes else NONE, changes=changes, current=current,
                           notes=[note] if note else [])

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
        if not self._wanted(ctx.cfg) and not self._unwanted(ctx.cfg):
            return self.action(ctx, NONE, detail="not needed")
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
        ensure_bindings(ctx, lambda: self._policy(ctx), lambda p: self._set(ctx, p),
                        self._wanted(ctx.cfg), self._unwanted(ctx.cfg))


def steps() -> list[Step]:
    """Every step, in the order `up` applies them (destroy goes the other way)."""
    return [
        Apis(),
        ServiceAccount(),
        BuilderAccount(),
        Secret(),
        SecretVersion(),
        GatewaySecret(),  # only with service.gateway
        GatewayPassphrase(),
        ServiceBudgetFirst(),  # only when the tier shrinks below what the running service may open
        SqlInstance(),
        SqlDatabase(),
        SqlUser(),
        Bucket(),
        IamBindings(
            "bucket_iam", lambda c: f"bucket {c.bucket_name}",
            lambda ctx: storage.get_iam_policy(ctx.clients, ctx.cfg.bucket_name),
            lambda ctx, p: storage.set_iam_policy(ctx.clients, ctx.cfg.bucket_name, p),
            desired.bucket_iam,
        ),
        IamBindings(
            "secret_iam", lambda c: f"secret {c.secret_id}",
            lambda ctx: secretmanager.get_iam_policy(ctx.clients, ctx.cfg.secret_id),
            lambda ctx, p: secretmanager.set_iam_policy(ctx.clients, ctx.cfg.secret_id, p),
            desired.secret_bindings,
        ),
        IamBindings(
            "gateway_secret_iam", lambda c: f"secret {c.gateway_secret_id}",
            lambda ctx: secretmanager.get_iam_policy(ctx.clients, ctx.cfg.gateway_secret_id),
            lambda ctx, p: secretmanager.set_iam_policy(ctx.clients, ctx.cfg.gateway_secret_id, p),
            desired.gateway_secret_bindings,
        ),
        IamBindings(
            "project_iam", lambda c: f"project {c.project}",
            lambda ctx: resourcemanager.get_iam_policy(ctx.clients),
            lambda ctx, p: resourcemanager.set_iam_policy(ctx.clients, p),
            desired.project_iam,
        ),
        IamBindings(
            "sa_iam", lambda c: f"service account {c.service.service_account}",
            lambda ctx: iam.get_iam_policy(ctx.clients, ctx.cfg.server_service_account_email),
            lambda ctx, p: iam.set_iam_policy(ctx.clients, ctx.cfg.server_service_account_email, p),
            desired.sa_self_bindings,
        ),
        Repository(),
        IamBindings(
            "repository_iam", lambda c: f"repository {c.service.repository}",
            lambda ctx: artifactregistry.get_iam_policy(ctx.clients, ctx.cfg.region, ctx.cfg.service.repository),
            lambda ctx, p: artifactregistry.set_iam_policy(ctx.clients, ctx.cfg.region, ctx.cfg.service.repository, p),
            desired.repository_iam,
        ),
        Image(),
        MigrationJob(),
        Migrate(),
        Service(),
        Invokers(),
    ]
