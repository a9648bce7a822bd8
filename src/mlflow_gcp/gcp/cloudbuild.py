"""Cloud Build: build and push the server image from an uploaded source tarball."""

from __future__ import annotations

from mlflow_gcp.errors import OperationFailed
from mlflow_gcp.gcp import operations

# Building the image (pip install of MLflow) takes 3-6 minutes on Cloud Build's default worker.
BUILD_TIMEOUT_SECONDS = 30 * 60


def build(clients, body: dict, progress=None) -> dict:
    """Run the build and wait; the finished Build (results.images[].digest)."""
    op = clients.execute(
        clients.api("cloudbuild").projects().builds().create(projectId=clients.project, body=body),
        "starting the image build",
    )
    done = operations.wait(clients, op, api="cloudbuild", what="the image build on Cloud Build",
                           timeout=BUILD_TIMEOUT_SECONDS, progress=progress)
    result = done.get("response") or {}
    status = result.get("status")
    if status and status != "SUCCESS":
        raise OperationFailed(f"the image build ended {status}: {result.get('statusDetail', '')}".strip(),
                              hint=f"see its log: {result.get('logUrl', 'Cloud Build history')}")
    return result
