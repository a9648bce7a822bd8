"""Artifact Registry v1: repositories (create/get/list/patch/delete with operations, IAM policies,
cleanup policies stored as given and checked as the reference describes) and Docker images (listed once Cloud Build pushed them, or seeded with add_image)."""

from __future__ import annotations

import copy
import hashlib
import re

from ..core.api import ApiModule, IamPolicies, Operation, Request, apply_mask, handles, new_id, now
from ..core.errors import GcpError, already_exists, invalid_argument

_ID = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
_MAX_CLEANUP_POLICIES = 10
_FORMATS = {"DOCKER", "MAVEN", "NPM", "APT", "YUM", "PYTHON", "KFP", "GO", "GENERIC"}


def _check_cleanup(policies) -> None:
    """What the v1 reference states about Repository.cleanupPolicies (types and enums are
    checked against the discovery document already): keys under 128 characters, an action,
    mostRecentVersions only with KEEP, and a condition or mostRecentVersions, not both; the
    overview page adds at most 10 policies per repository."""
    if len(policies or {}) > _MAX_CLEANUP_POLICIES:
        raise invalid_argument(f"A repository has at most {_MAX_CLEANUP_POLICIES} cleanup policies.",
                               field="repository.cleanup_policies")
    for key, policy in (policies or {}).items():
        where = f"repository.cleanup_policies[{key}]"
        if not key or len(key) >= 128:
            raise invalid_argument(f"{where}: policy ids are 1 to 127 characters.", field="repository.cleanup_policies")
        action = (policy or {}).get("action")
        if action not in ("DELETE", "KEEP"):
            raise invalid_argument(f"{where}.action must be DELETE or KEEP.", field=f"{where}.action")
        if policy.get("mostRecentVersions") is not None:
            if action != "KEEP":
                raise invalid_argument(f"{where}: most_recent_versions may only be specified with a Keep action.",
                                       field=f"{where}.most_recent_versions")
            if policy.get("condition") is not None:
                raise invalid_argument(f"{where}: a policy has a condition or most_recent_versions, not both.",
                                       field=f"{where}.condition")
        elif policy.get("condition") is None:
            raise invalid_argument(f"{where}: a condition or most_recent_versions is required.",
                                   field=f"{where}.condition")


class ArtifactRegistry(ApiModule):
    name = "artifactregistry"
    versions = ("v1",)
    service = "artifactregistry.googleapis.com"
    title = "Artifact Registry API"

    def reset(self) -> None:
        self.state: dict[str, dict] = {}  # repository name -> Repository
        self.images: dict[str, dict] = {}  # docker image name -> DockerImage
        self.ops: dict[str, Operation] = {}
        self.iam = IamPolicies(member_check=self.fake.check_member)  # key: repository name

    def snapshot(self) -> dict:
        return {"repositories": self.state, "iam": self.iam.policies,
                "images": sorted(f"{i['_repo']}/{i['_image']}:{','.join(i['tags'])}" for i in self.images.values())}

    def _repo(self, name: str) -> dict:
        repo = self.state.get(name)
        if repo is None:
            raise GcpError(404, f"Requested entity was not found.", "NOT_FOUND")
        return repo

    def _lro(self, parent_name: str, on_done) -> dict:
        parts = parent_name.split("/")
        name = f"projects/{parts[1]}/locations/{parts[3]}/operations/{new_id()}"
        op = self.new_operation(name, on_done, target=parent_name, metadata={
            "@type": "type.googleapis.com/google.devtools.artifactregistry.v1.OperationMetadata"})
        self.ops[name] = op
        return op.lro()

    @handles("artifactregistry.projects.locations.operations.get")
    def get_operation(self, req: Request) -> dict:
        op = self.ops.get(req.get("name"))
        if op is None:
            raise GcpError(404, "Operation not found.", "NOT_FOUND")
        op.poll()
        return op.lro()

    @handles("artifactregistry.projects.locations.repositories.create")
    def create(self, req: Request) -> dict:
        rid = req.get("repositoryId") or ""
        if not _ID.fullmatch(rid):
            raise invalid_argument("repository_id must be lowercase letters, digits and hyphens, "
                                   "starting with a letter.", field="repository_id")
        name = f"{req.get('parent')}/repositories/{rid}"
        if name in self.state:
            raise already_exists(f"Repository {name}")
        body = copy.deepcopy(req.body or {})
        if body.get("format") not in _FORMATS:
            raise invalid_argument("repository.format is required (e.g. DOCKER).", field="repository.format")
        _check_cleanup(body.get("cleanupPolicies"))
        repo = {k: v for k, v in body.items() if k not in ("name", "createTime", "updateTime")}
        repo.update({"name": name, "createTime": now(), "updateTime": now(), "mode": body.get("mode", "STANDARD_REPOSITORY"),
                     "sizeBytes": "0", "satisfiesPzi": False,
                     "registryUri": f"{name.split('/')[3]}-docker.pkg.dev/{name.split('/')[1]}/{rid}"})
        self.state[name] = repo

        def done(op):
            return {"@type": "type.googleapis.com/google.devtools.artifactregistry.v1.Repository",
                    **copy.deepcopy(repo)}

        return self._lro(name, done)

    @handles("artifactregistry.projects.locations.repositories.get")
    def get(self, req: Request) -> dict:
        return copy.deepcopy(self._repo(req.get("name")))

    @handles("artifactregistry.projects.locations.repositories.list")
    def list(self, req: Request) -> dict:
        prefix = req.get("parent") + "/repositories/"
        items = [copy.deepcopy(r) for n, r in sorted(self.state.items()) if n.startswith(prefix)]
        return {"repositories": items} if items else {}

    @handles("artifactregistry.projects.locations.repositories.patch")
    def patch(self, req: Request) -> dict:
        repo = self._repo(req.get("name"))
        body = {k: v for k, v in (req.body or {}).items() if k not in ("name", "format", "createTime")}
        mask = req.get("updateMask")
        if mask is None or mask == "*" or "cleanupPolicies" in mask.split(","):
            _check_cleanup(body.get("cleanupPolicies"))
        apply_mask(repo, body, mask)
        repo["updateTime"] = now()
        return copy.deepcopy(repo)

    @handles("artifactregistry.projects.locations.repositories.delete")
    def delete(self, req: Request) -> dict:
        name = req.get("name")
        self._repo(name)
        del self.state[name]
        self.iam.delete(name)
        for image in [i for i in self.images if i.startswith(name + "/")]:
            del self.images[image]
        return self._lro(name, lambda op: {"@type": "type.googleapis.com/google.protobuf.Empty"})

    @handles("artifactregistry.projects.locations.repositories.getIamPolicy")
    def get_iam_policy(self, req: Request) -> dict:
        self._repo(req.get("resource"))
        return self.iam.get(req.get("resource"))

    @handles("artifactregistry.projects.locations.repositories.setIamPolicy")
    def set_iam_policy(self, req: Request) -> dict:
        self._repo(req.get("resource"))
        return self.iam.set(req.get("resource"), (req.body or {}).get("policy") or {})

    # -- docker images ----------------------------------------------------------------------

    def add_image(self, uri: str, tags: list[str] | None = None) -> dict | None:
        """Record a pushed image given as REGION-docker.pkg.dev/PROJECT/REPO/IMAGE[:TAG][@DIGEST].

        Returns the DockerImage, or None when the URI is not an Artifact Registry repository of
        this fake (e.g. gcr.io)."""
        m = re.fullmatch(r"([a-z0-9-]+)-docker\.pkg\.dev/([^/]+)/([^/]+)/([^:@]+)(?::([^@]+))?(?:@(.+))?", uri)
        if not m:
            return None
        region, project, repo, image, tag, digest = m.groups()
        repo_name = f"projects/{project}/locations/{region}/repositories/{repo}"
        if repo_name not in self.state:
            return None
        digest = digest or "sha256:" + hashlib.sha256(f"{uri}/{new_id()}".encode()).hexdigest()
        tags = list(tags or ([tag] if tag else ["latest"]))
        # A tag moves to the newest image, as in a registry.
        for other in self.images.values():
            if other["_image"] == image and other["_repo"] == repo_name:
                other["tags"] = [t for t in other.get("tags", []) if t not in tags]
        key = f"{repo_name}/dockerImages/{image.replace('/', '%2F')}@{digest}"
        entry = {
            "name": key, "uri": f"{region}-docker.pkg.dev/{project}/{repo}/{image}@{digest}",
            "tags": tags, "imageSizeBytes": "123456789", "uploadTime": now(), "updateTime": now(),
            "buildTime": now(), "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "_image": image, "_repo": repo_name,
        }
        self.images[key] = entry
        return {k: v for k, v in entry.items() if not k.startswith("_")}

    @handles("artifactregistry.projects.locations.repositories.dockerImages.list")
    def list_images(self, req: Request) -> dict:
        self._repo(req.get("parent"))
        prefix = req.get("parent") + "/dockerImages/"
        items = [{k: v for k, v in i.items() if not k.startswith("_")}
                 for n, i in self.images.items() if n.startswith(prefix)]
        return {"dockerImages": items} if items else {}

    @handles("artifactregistry.projects.locations.repositories.dockerImages.get")
    def get_image(self, req: Request) -> dict:
        image = self.images.get(req.get("name"))
        if image is None:
            raise GcpError(404, "Requested entity was not found.", "NOT_FOUND")
        return {k: v for k, v in image.items() if not k.startswith("_")}
