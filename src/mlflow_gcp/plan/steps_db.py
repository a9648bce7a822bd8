"""Steps for the database: the password's secret and version, the Cloud SQL instance, its
database and its user (whose password only ever lives in Secret Manager)."""

from __future__ import annotations

import secrets as _secrets

from mlflow_gcp.errors import Conflict, MlflowGcpError, NotFound
from mlflow_gcp.gcp import run, secretmanager, sql
from mlflow_gcp.plan import adopt, desired
from mlflow_gcp.plan.context import Step
from mlflow_gcp.plan.diff import diff
from mlflow_gcp.plan.model import CREATE, NONE, UPDATE

# Secret annotation naming the instance/user whose password was set from this secret; without it
# an existing user is "adopted" by setting its password from the secret.
SYNCED_ANNOTATION = "mlflow-gcp-password-set-on"
IMPORT_HINT = ("rerun on a terminal to type it (never echoed), or without --import-db-password to "
               "give the user a new generated password")


def _marker(cfg) -> str:
    return f"{cfg.database.instance}.{cfg.database.user}"


def _synced(ctx) -> bool:
    secret = ctx.facts.get("secret") or {}
    return (secret.get("annotations") or {}).get(SYNCED_ANNOTATION) == _marker(ctx.cfg)


def _old_password(ctx) -> tuple[str, str] | None:
    """(where, password) of the configured user, from the service being replaced."""
    raw = run.get_service_raw(ctx.clients, ctx.cfg.region, ctx.cfg.service.name)
    env = adopt.service_env(raw)
    found = adopt.password_in_env(env)
    if found is None:
        return None
    user = adopt.user_in_env(env)
    if user not in (None, ctx.cfg.database.user):
        raise Conflict(
            f"service {ctx.cfg.service.name} connects as database user {user!r}, not "
            f"{ctx.cfg.database.user!r}: its password is not the one to import",
            hint=f"set database.user = \"{user}\" to adopt that user, or drop --import-db-password",
        )
    return f"service {ctx.cfg.service.name}'s {found[0]}", found[1]


# Changing these makes Cloud SQL restart the instance.
_RESTARTING = {"settings.tier", "settings.edition", "settings.ipConfiguration.privateNetwork"}


class Secret(Step):
    """The database password's secret (its labels kept in step); `GatewaySecret` reuses it."""

    key, kind = "secret", "secret"
    fact = "secret"

    def secret_id(self, cfg) -> str | None:
        return cfg.secret_id

    def name(self, ctx):
        return self.secret_id(ctx.cfg)

    def inspect(self, ctx):
        secret_id = self.secret_id(ctx.cfg)
        if secret_id is None:
            return self.action(ctx, NONE, detail="not needed")
        current = secretmanager.get_secret(ctx.clients, secret_id)
        ctx.facts[self.fact] = current
        if current is None:
            return self.action(ctx, CREATE)
        changes = diff({"labels": ctx.cfg.all_labels}, current)
        return self.action(ctx, UPDATE if changes else NONE, changes=changes, current=current)

    def apply(self, ctx, action):
        secret_id = self.secret_id(ctx.cfg)
        if action.verb == CREATE:
            secretmanager.create_secret(ctx.clients, secret_id, ctx.cfg.all_labels)
        else:
            labels = {**(action.current.get("labels") or {}), **ctx.cfg.all_labels}
            secretmanager.patch_labels(ctx.clients, secret_id, labels)


class GatewaySecret(Secret):
    """The AI gateway's passphrase secret (MLFLOW_CRYPTO_KEK_PASSPHRASE), only with service.gateway."""

    key, kind = "gateway_secret", "secret"
    fact = "gateway_secret"

    def secret_id(self, cfg) -> str | None:
        return cfg.gateway_secret_id if cfg.service.gateway else None


class GatewayPassphrase(Step):
    """The gateway's passphrase, generated once like the password and kept only in Secret
    Manager; the service reads it as a secret reference (plan/desired.py)."""

    key, kind = "gateway_passphrase", "gateway passphrase"

    def name(self, ctx):
        return f"{ctx.cfg.gateway_secret_id} (Secret Manager only)"

    def inspect(self, ctx):
        if not ctx.cfg.service.gateway:
            return self.action(ctx, NONE, detail="not needed")
        try:
            has = secretmanager.has_enabled_version(ctx.clients, ctx.cfg.gateway_secret_id)
        except NotFound:
            has = False
        if has:
            return self.action(ctx, NONE)
        return self.action(ctx, CREATE, detail="generate a passphrase and store it as a secret version")

    def apply(self, ctx, action):
        secretmanager.add_version(ctx.clients, ctx.cfg.gateway_secret_id, _secrets.token_urlsafe(32))


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
        if ctx.facts.get("import_password") and not _synced(ctx) and not ctx.facts.get("password"):
            # An adopted user keeps its password: it goes into the secret instead of a new one.
            found = _old_password(ctx)
            where = found[0] if found else "a prompt when applying"
            return self.action(ctx, CREATE, data={"import": True}, detail=(
                f"import the current password of database user {ctx.cfg.database.user} from {where} "
                "(never shown)"))
        if has:
            return self.action(ctx, NONE)
        return self.action(ctx, CREATE, detail="generate a password and store it as a secret version")

    def apply(self, ctx, action):
        if action.data.get("import"):
            found = _old_password(ctx)
            password = found[1] if found else None
            if password is None and ctx.facts.get("ask_password"):
                password = ctx.facts["ask_password"](
                    f"Current password of database user {ctx.cfg.database.user}")
            if not password:
                raise MlflowGcpError(
                    f"no password to import for database user {ctx.cfg.database.user}: service "
                    f"{ctx.cfg.service.name} has no DB_URI with a password and no terminal to ask on",
                    hint=IMPORT_HINT)
            ctx.facts["password_imported"] = True
        else:
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
            ctx.facts["database_existed"] = False
            return self.action(ctx, CREATE)
        found = sql.get_database(ctx.clients, ctx.cfg.database.instance, ctx.cfg.database.database)
        # Known before this run: its schema, if any, is someone's data (a backup before migrating).
        ctx.facts.setdefault("database_existed", found is not None)
        return self.action(ctx, CREATE if found is None else NONE)

    def apply(self, ctx, action):
        sql.create_database(ctx.clients, ctx.cfg.database.instance, ctx.cfg.database.database, progress=ctx.progress)


class SqlUser(Step):
    key, kind = "sql_user", "database user"

    def name(self, ctx):
        return f"{ctx.cfg.database.instance}/{ctx.cfg.database.user}"

    def inspect(self, ctx):
        db = ctx.cfg.database
        user = None if ctx.facts.get("sql_instance_exists") is False else sql.get_user(ctx.clients, db.instance, db.user)
        if user is None:
            return self.action(ctx, CREATE, data={"exists": False}, notes=self._missing_notes(ctx))
        if ctx.facts.get("password_missing") or ctx.facts.get("password") or not _synced(ctx):
            if ctx.facts.get("import_password") or ctx.facts.get("password_imported"):
                return self.action(ctx, UPDATE, data={"exists": True},
                                   detail="adopt it with its current password (imported into the secret)")
            notes = [] if _synced(ctx) else [adopt.password_change_note(
                ctx.cfg, run.get_service_raw(ctx.clients, ctx.cfg.region, ctx.cfg.service.name))]
            return self.action(ctx, UPDATE, detail="set its password from the secret", data={"exists": True},
                               notes=notes)
        return self.action(ctx, NONE)

    def _missing_notes(self, ctx) -> list[str]:
        """An existing database without our user: its tables belong to someone else."""
        if not ctx.facts.get("database_existed") or ctx.applying:
            return []
        candidates = adopt.other_users(sql.list_users(ctx.clients, ctx.cfg.database.instance), ctx.cfg.database.user)
        service_user = adopt.user_in_env(adopt.service_env(
            run.get_service_raw(ctx.clients, ctx.cfg.region, ctx.cfg.service.name)))
        if not candidates and not service_user:
            return []
        return [adopt.missing_user_note(ctx.cfg, candidates, service_user)]

    def apply(self, ctx, action):
        db = ctx.cfg.database
        password = ctx.facts.get("password") or secretmanager.access_latest(ctx.clients, ctx.cfg.secret_id)
        created = not action.data["exists"] and sql.create_user(
            ctx.clients, db.instance, db.user, password, progress=ctx.progress
        )
        # Adopted, or created meanwhile by another run: its password is unknown, unless it was
        # imported from what already connects as it.
        if not created and not ctx.facts.get("password_imported"):
            sql.set_password(ctx.clients, db.instance, db.user, password, progress=ctx.progress)
        secret = secretmanager.get_secret(ctx.clients, ctx.cfg.secret_id) or {}
        annotations = {**(secret.get("annotations") or {}), SYNCED_ANNOTATION: _marker(ctx.cfg)}
        secretmanager.patch_annotations(ctx.clients, ctx.cfg.secret_id, annotations)
        ctx.facts["secret"] = {**secret, "annotations": annotations}
        ctx.facts.pop("password", None)
