"""`status`: what is deployed and how it is doing, read from the APIs (no write)."""

from __future__ import annotations

from mlflow_gcp import budget
from mlflow_gcp.errors import GcpError
from mlflow_gcp.gcp import run, sql, sqlbackup, storage
from mlflow_gcp.ops import live, schedule
from mlflow_gcp.plan.desired import mlflow_version_of  # noqa: F401  (ops import it from here)


def describe_rule(rule: dict) -> str:
    """A lifecycle rule in words."""
    action, cond = rule.get("action") or {}, rule.get("condition") or {}
    where = ", ".join(cond.get("matchesPrefix") or []) or "the whole bucket"
    age = cond.get("age")
    when = f"older than {age} days" if age is not None else "matching " + ", ".join(sorted(cond))
    if action.get("type") == "Delete":
        return f"delete objects under {where} {when}"
    if action.get("type") == "SetStorageClass":
        return f"move objects under {where} {when} to {action.get('storageClass')} (nothing deleted)"
    return f"{action.get('type')} objects under {where} {when}"


def _env(raw: dict) -> list[dict]:
    containers = (raw.get("template") or {}).get("containers") or [{}]
    return containers[0].get("env") or []


def env_value(raw: dict, name: str) -> str | None:
    for item in _env(raw):
        if item.get("name") == name:
            return item.get("value")
    return None


def gather(ctx, url: str | None = None) -> dict:
    cfg, clients = ctx.cfg, ctx.clients
    out: dict = {"project": cfg.project, "region": cfg.region}

    raw = run.get_service_raw(clients, cfg.region, cfg.service.name)
    if raw is None:
        out["service"] = {"name": cfg.service.name, "deployed": False}
    else:
        scaling = (raw.get("template") or {}).get("scaling") or {}
        image = (((raw.get("template") or {}).get("containers") or [{}])[0]).get("image")
        cond = raw.get("terminalCondition") or {}
        out["service"] = {
            "name": cfg.service.name,
            "deployed": True,
            "url": raw.get("uri"),
            "ready": cond.get("state") == "CONDITION_SUCCEEDED",
            "condition": cond.get("message") or cond.get("state"),
            "ready_revision": (raw.get("latestReadyRevision") or "").rsplit("/", 1)[-1] or None,
            "serving": _serving(raw),
            "image": image,
            "mlflow_version": mlflow_version_of(image, _env(raw)),
            "min_instances": int(scaling.get("minInstanceCount") or 0),
            "max_instances": int(scaling.get("maxInstanceCount") or 0),
        }

    inst = sql.get_instance(clients, cfg.database.instance)
    if inst is None:
        out["database"] = {"instance": cfg.database.instance, "exists": False}
    else:
        settings = inst.get("settings") or {}
        paused = live.is_paused(inst)
        out["database"] = {
            "instance": cfg.database.instance,
            "exists": True,
            "state": "PAUSED" if paused else inst.get("state"),
            "paused": paused,
            "tier": settings.get("tier"),
            "version": inst.get("databaseVersion"),
            "max_connections": _max_connections(settings.get("tier")),
        }
        try:
            backups = sqlbackup.list_backups(clients, cfg.database.instance)
        except GcpError as err:
            backups, out["database"]["backups_error"] = [], err.message
        done = [b for b in backups if b.get("status") == "SUCCESSFUL"]
        out["database"]["last_backup"] = _backup_row(done[0]) if done else None

    bucket = storage.get_bucket(clients, cfg.bucket_name)
    out["bucket"] = {"name": cfg.bucket_name, "exists": bucket is not None}
    if bucket is not None:
        out["bucket"]["lifecycle"] = [describe_rule(r) for r in (bucket.get("lifecycle") or {}).get("rule") or []]

    out["schedule"] = schedule.show(ctx, quiet=True)
    out["budget"] = _budget(cfg, raw, (out["database"].get("tier") if out["database"].get("exists") else None))
    service_uri = out["service"].get("url")
    checked = live.probe(ctx, url, service_uri) if (raw is not None or url) else None
    out["health"] = None if checked is None else {"ok": checked.ok, "message": checked.message}
    if out.get("database", {}).get("paused") and checked is not None and checked.ok is False:
        out["health"]["message"] += " (the database is paused: `mlflow-gcp resume`)"
    return out


def _serving(raw: dict) -> list[str]:
    from mlflow_gcp.gcp import runrevisions

    return runrevisions.serving_revisions(raw)


def _max_connections(tier: str | None) -> int | None:
    try:
        return budget.tier_max_connections(tier) if tier else None
    except ValueError:
        return None


def _backup_row(b: dict) -> dict:
    return {"id": b.get("id"), "type": b.get("type"), "status": b.get("status"),
            "time": b.get("endTime") or b.get("windowStartTime") or b.get("enqueuedTime"),
            "description": b.get("description")}


def _budget(cfg, raw: dict | None, deployed_tier: str | None) -> dict:
    """The connections the deployed service may open against what the deployed tier allows."""
    tier = deployed_tier or cfg.database.tier
    max_conn = _max_connections(tier) or cfg.database.max_connections
    out = {"tier": tier, "max_connections": max_conn, "reserved": budget.RESERVED_CONNECTIONS}
    if raw is not None:
        per_instance = env_value(raw, "DB_CONNECTIONS")
        instances = int(((raw.get("template") or {}).get("scaling") or {}).get("maxInstanceCount") or 0)
        if per_instance and per_instance.isdigit():
            used = int(per_instance) * instances + budget.RESERVED_CONNECTIONS
            out.update(per_instance=int(per_instance), instances=instances, at_most=used, fits=used <= max_conn)
    return out
