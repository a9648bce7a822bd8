"""Cloud Run (v2) beyond what `up` needs: revisions, traffic, and patches that keep the rest.

`services.patch` without an update mask replaces the whole service, so `patch_service` sends the
service as read (its input fields) with the caller's changes applied.
"""

from __future__ import annotations

import copy

from mlflow_gcp.errors import NotFound
from mlflow_gcp.gcp import operations, run

# The fields of a Service a client sets; the rest is output only.
SERVICE_INPUT = ("description", "labels", "annotations", "client", "clientVersion", "ingress",
                 "launchStage", "binaryAuthorization", "template", "traffic", "scaling",
                 "defaultUriDisabled", "invokerIamDisabled", "customAudiences")


def input_body(raw: dict) -> dict:
    """The settable part of a service as read, to send back with changes."""
    return {k: copy.deepcopy(raw[k]) for k in SERVICE_INPUT if k in raw}


CONNECTIONS_ENV = "DB_CONNECTIONS"  # the server's share of the database (server/env.py)


def set_instance_budget(body: dict, min_instances: int, max_instances: int, per_instance: int) -> bool:
    """Set a service body's scaling bounds and its container's DB_CONNECTIONS, in place (added
    where missing); True when anything changed. Both bounds at once: Cloud Run refuses a minimum
    above the maximum, and limits and connection share must change in the same revision."""
    template = body.setdefault("template", {})
    scaling = template.setdefault("scaling", {})
    before = (int(scaling.get("minInstanceCount") or 0), int(scaling.get("maxInstanceCount") or 0))
    scaling.update(minInstanceCount=min_instances, maxInstanceCount=max_instances)
    containers = template.setdefault("containers", [])
    if not containers:
        containers.append({})
    env = containers[0].setdefault("env", [])
    value = str(per_instance)
    item = next((e for e in env if e.get("name") == CONNECTIONS_ENV), None)
    if item is None:
        env.append({"name": CONNECTIONS_ENV, "value": value})
        env_changed = True
    else:
        env_changed = item.get("value") != value
        item["value"] = value
    return env_changed or before != (min_instances, max_instances)


def patch_service(clients, region: str, service: str, body: dict, *, new_revision: bool = False,
                  progress=None) -> dict:
    """Patch and wait for the rollout; the service as the finished operation returns it."""
    kwargs = {"forceNewRevision": True} if new_revision else {}
    op = clients.execute(
        run._services(clients).patch(name=run.service_name(clients, region, service), body=body, **kwargs),
        f"updating Cloud Run service {service}",
    )
    done = operations.wait(clients, op, api="run", what=f"Cloud Run service {service} to roll out",
                           timeout=run.DEPLOY_TIMEOUT_SECONDS, progress=progress)
    return done.get("response") or {}


def revision_name(clients, region: str, service: str, revision: str) -> str:
    return f"{run.service_name(clients, region, service)}/revisions/{revision}"


def get_revision(clients, region: str, service: str, revision: str) -> dict | None:
    try:
        return clients.execute(
            run._services(clients).revisions().get(name=revision_name(clients, region, service, revision)),
            f"reading revision {revision}",
        )
    except NotFound:
        return None


def revision_ready(rev: dict | None) -> bool:
    for cond in (rev or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("state") == "CONDITION_SUCCEEDED"
    return False


def pin_traffic(clients, region: str, service: str, revision: str, progress=None) -> dict:
    """Send 100% of requests to `revision` (no new revision is created)."""
    raw = run.get_service_raw(clients, region, service)
    if raw is None:
        raise NotFound(f"Cloud Run service {service} does not exist")
    body = input_body(raw)
    body["traffic"] = [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": revision, "percent": 100}]
    return patch_service(clients, region, service, body, progress=progress)


def serving_revisions(raw: dict) -> list[str]:
    """Revisions that get traffic, by what the service reports (trafficStatuses)."""
    out = []
    for t in raw.get("trafficStatuses") or raw.get("traffic") or []:
        if not t.get("percent"):
            continue
        if t.get("type") == "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST" or not t.get("revision"):
            rev = (raw.get("latestReadyRevision") or "").rsplit("/", 1)[-1]
        else:
            rev = t["revision"]
        if rev:
            out.append(rev)
    return out
