"""Service Usage: which APIs are enabled, and enabling the missing ones."""

from __future__ import annotations

from mlflow_gcp.gcp import operations

# batchGet and batchEnable accept at most 20 services per call.
_BATCH = 20


def disabled(clients, services: list[str]) -> list[str]:
    """The subset of `services` (e.g. run.googleapis.com) not enabled in the project."""
    api = clients.api("serviceusage").services()
    parent = f"projects/{clients.project}"
    out = []
    for i in range(0, len(services), _BATCH):
        chunk = services[i:i + _BATCH]
        names = [f"{parent}/services/{s}" for s in chunk]
        resp = clients.execute(api.batchGet(parent=parent, names=names), "checking enabled APIs")
        enabled = {
            s.get("name", "").rsplit("/", 1)[-1]
            for s in resp.get("services") or []
            if s.get("state") == "ENABLED"
        }
        out += [s for s in chunk if s not in enabled]
        clients.enabled_services.update(enabled)
    return out


def enable(clients, services: list[str], progress=None) -> None:
    api = clients.api("serviceusage").services()
    parent = f"projects/{clients.project}"
    for i in range(0, len(services), _BATCH):
        chunk = services[i:i + _BATCH]
        op = clients.execute(
            api.batchEnable(parent=parent, body={"serviceIds": chunk}),
            f"enabling {', '.join(chunk)}",
        )
        operations.wait(clients, op, api="serviceusage", what="enabling APIs", timeout=600, progress=progress)
        # Enabled, yet Google may refuse their calls for minutes: those refusals are waited out.
        clients.enabled_services.update(chunk)
