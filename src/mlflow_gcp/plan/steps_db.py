"""Steps for the database: the password's secret and version, the Cloud SQL instance, its
database and its user (whose password only ever lives in Secret Manager)."""

from __future__ import annotations

import secrets as _secrets

from mlflow_gcp.errors import Conflict, NotFound
from mlflow_gcp.gcp import secretmanager, sql
from mlflow_gcp.plan import desired
from mlflow_gcp.plan.context import Step
from mlflow_gcp.plan.diff import diff
from mlflow_gcp.plan.model import CREATE, NONE, UPDATE

# Secret annotation naming the instance/user whose password was set from this secret; without it
# an existing user is "adopted" by setting its password from the secret.
SYNCED_ANNOTATION = "mlflow-gcp-password-set-on"
# Changing these makes Cloud SQL restart the instance.
_RESTARTING = {"settings.tier", "settings.edition", "settings.ipConfiguration.privateNetwork"}


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
        restart = any(c.path in _RESTARTING for c in changes)
        return self.action(ctx, UPDATE if changes else NONE, changes=changes, current=current,
                           detail="restarts the instance: a few minutes without database" if restart else "")

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
