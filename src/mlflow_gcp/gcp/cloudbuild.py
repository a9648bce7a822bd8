"""Cloud Build: build and push the server image from an uploaded source tarball."""

from __future__ import annotations

import uuid

from mlflow_gcp.errors import OperationFailed
from mlflow_gcp.gcp import operations

# Building the image (pip install of MLflow) takes 3-6 minutes on Cloud Build's default worker.
BUILD_TIMEOUT_SECONDS = 30 * 60


_DONE = {"SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}
WHAT = "the image build on Cloud Build"


def find_tagged(clients, tag: str) -> dict | None:
    resp = clients.execute(
        clients.api("cloudbuild").projects().builds().list(projectId=clients.project, filter=f'tags="{tag}"'),
        "looking for the image build just started")
    return next(iter(resp.get("builds") or []), None)


def get_build(clients, build_id: str) -> dict:
    return clients.execute(clients.api("cloudbuild").projects().builds().get(projectId=clients.project, id=build_id),
                           f"checking on {WHAT}")


def build(clients, body: dict, progress=None) -> dict:
    """Run the build and wait; the finished Build (results.images[].digest).

    A build is not idempotent: started again after a lost answer, it builds twice. Each start is
    tagged with its own request id, so a lost answer is followed by a look for that tag."""
    request_id = f"mlflow-gcp-request-{uuid.uuid4().hex[:16]}"
    body = {**body, "tags": [*(body.get("tags") or []), request_id]}
    op, found = operations.send_once(
        clients, clients.api("cloudbuild").projects().builds().create(projectId=clients.project, body=body),
        "starting the image build", lambda: find_tagged(clients, request_id))
    if op is not None:
        done = operations.wait(clients, op, api="cloudbuild", what=WHAT, timeout=BUILD_TIMEOUT_SECONDS,
                               progress=progress)
        result = done.get("response") or {}
    else:
        result = operations.wait_until(clients, lambda: get_build(clients, found["id"]),
                                       lambda b: b.get("status") in _DONE, what=WHAT,
                                       timeout=BUILD_TIMEOUT_SECONDS, progress=progress)
    status = result.get("status")
    if status and status != "SUCCESS":
        raise OperationFailed(f"the image build ended {status}: {result.get('statusDetail', '')}".strip(),
                              hint=f"see its log: {result.get('logUrl', 'Cloud Build history')}")
    return result
