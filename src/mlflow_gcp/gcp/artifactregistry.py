"""Artifact Registry: the Docker repository and the digest behind an image tag."""

from __future__ import annotations

from mlflow_gcp.errors import AlreadyExists, NotFound
from mlflow_gcp.gcp import operations


def repo_name(clients, region: str, repo: str) -> str:
    return f"projects/{clients.project}/locations/{region}/repositories/{repo}"


def _repos(clients):
    return clients.api("artifactregistry").projects().locations().repositories()


def get_repository(clients, region: str, repo: str) -> dict | None:
    return operations.read(clients, _repos(clients).get(name=repo_name(clients, region, repo)), f"reading repository {repo}")


def create_repository(clients, region: str, repo: str, body: dict, progress=None) -> bool:
    return operations.change(
        clients,
        _repos(clients).create(parent=f"projects/{clients.project}/locations/{region}", repositoryId=repo, body=body),
        f"creating repository {repo}", api="artifactregistry", wait_for=f"repository {repo}", timeout=300,
        progress=progress, tolerate=(AlreadyExists,),
    )


def patch_repository(clients, region: str, repo: str, body: dict, fields: list[str]) -> dict:
    """Update only `fields` (an update mask); repositories.patch answers with the repository, no operation."""
    return clients.execute(
        _repos(clients).patch(name=repo_name(clients, region, repo), updateMask=",".join(fields), body=body),
        f"updating repository {repo}",
    )


def delete_repository(clients, region: str, repo: str, progress=None) -> bool:
    return operations.change(
        clients, _repos(clients).delete(name=repo_name(clients, region, repo)), f"deleting repository {repo}",
        api="artifactregistry", wait_for=f"repository {repo} deletion", timeout=600, progress=progress,
        tolerate=(NotFound,),
    )


def tag_digest(clients, region: str, repo: str, package: str, tag: str) -> str | None:
    """sha256:... that `package:tag` points to, or None when there is no such tag (or repository)."""
    api = _repos(clients).dockerImages()
    token = None
    try:
        while True:
            resp = clients.execute(
                api.list(parent=repo_name(clients, region, repo), pageToken=token),
                f"looking for image {package}:{tag}",
            )
            for image in resp.get("dockerImages") or []:
                path, _, digest = (image.get("uri") or "").partition("@")
                if path.rsplit("/", 1)[-1] == package and tag in (image.get("tags") or []):
                    return digest or None
            token = resp.get("nextPageToken")
            if not token:
                return None
    except NotFound:
        return None


def get_iam_policy(clients, region: str, repo: str) -> dict:
    return clients.execute(_repos(clients).getIamPolicy(resource=repo_name(clients, region, repo)),
                           f"reading the IAM policy of repository {repo}")


def set_iam_policy(clients, region: str, repo: str, policy: dict) -> dict:
    return clients.execute(
        _repos(clients).setIamPolicy(resource=repo_name(clients, region, repo), body={"policy": policy}),
        f"updating the IAM policy of repository {repo}",
    )
