"""`rotate-password`: a new database password with no downtime beyond a rollout.

1. generate it and store it as a new Secret Manager version (nothing else ever sees it);
2. set it on the Cloud SQL user (open connections stay open; new ones need the new password);
3. roll out a new revision of the service, whose instances read the secret's latest version
   (the running ones keep their connections until they are replaced);
4. disable the older versions (disabled, not destroyed: `gcloud secrets versions enable`
   undoes it).
The password is never printed, logged or returned.
"""

from __future__ import annotations

import secrets as _secrets
from dataclasses import dataclass, field

from mlflow_gcp.errors import MlflowGcpError
from mlflow_gcp.gcp import run, runrevisions, secretversions, sql
from mlflow_gcp.ops import live

# Template annotation that records which secret version a revision was rolled out for; it is
# also what makes the template differ, so Cloud Run creates the new revision.
VERSION_ANNOTATION = "mlflow-gcp/password-version"


@dataclass
class RotateResult:
    version: str
    revision: str | None
    disabled: list[str] = field(default_factory=list)


def rotate(ctx) -> RotateResult:
    cfg, clients = ctx.cfg, ctx.clients
    db = cfg.database
    live.require_running(ctx, "rotating the password")
    if sql.get_user(clients, db.instance, db.user) is None:
        raise MlflowGcpError(f"database user {db.user} does not exist on {db.instance}", hint=live.NOT_DEPLOYED_HINT)
    raw = run.get_service_raw(clients, cfg.region, cfg.service.name)
    if raw is None:
        raise MlflowGcpError(f"Cloud Run service {cfg.service.name} is not deployed", hint=live.NOT_DEPLOYED_HINT)
    live.require_latest_traffic(raw, "a new password")
    old_versions = secretversions.enabled(clients, cfg.secret_id)

    password = _secrets.token_urlsafe(32)
    version = secretversions.add(clients, cfg.secret_id, password)
    ctx.say(f"stored a new password as version {version} of secret {cfg.secret_id}")
    try:
        sql.set_password(clients, db.instance, db.user, password, progress=ctx.progress)
    except MlflowGcpError:
        # New instances read the latest version: it must not hold a password the database lacks.
        secretversions.destroy(clients, cfg.secret_id, version)
        ctx.say(f"the database refused the new password; version {version} was destroyed, nothing changed")
        raise
    finally:
        del password
    ctx.say(f"database user {db.user} updated")

    body = runrevisions.input_body(raw)
    template = body.setdefault("template", {})
    template["annotations"] = {**(template.get("annotations") or {}), VERSION_ANNOTATION: version}
    ctx.say(f"rolling out a new revision of {cfg.service.name}")
    runrevisions.patch_service(clients, cfg.region, cfg.service.name, body, progress=ctx.progress)
    after = run.get_service_raw(clients, cfg.region, cfg.service.name) or {}
    revision = (after.get("latestReadyRevision") or "").rsplit("/", 1)[-1] or None

    result = RotateResult(version, revision)
    for old in old_versions:
        if old != version:
            secretversions.disable(clients, cfg.secret_id, old)
            result.disabled.append(old)
    if result.disabled:
        ctx.say(f"disabled old version(s) {', '.join(result.disabled)}")
    return result
