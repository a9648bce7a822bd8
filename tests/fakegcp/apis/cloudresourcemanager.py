"""Cloud Resource Manager v1 and v3: projects get, getIamPolicy, setIamPolicy (etag checked).

Every project id exists (projectNumber is derived from the id) unless listed in `missing`, which
answers 403 as Google does for a project you cannot see."""

from __future__ import annotations

from ..core.api import ApiModule, IamPolicies, Request, handles, project_number
from ..core.errors import GcpError

DEFAULT_OWNER = "user:owner@example.com"


class ResourceManager(ApiModule):
    name = "cloudresourcemanager"
    versions = ("v1", "v3")
    service = "cloudresourcemanager.googleapis.com"
    title = "Cloud Resource Manager API"

    def reset(self) -> None:
        self.iam = IamPolicies(member_check=self.fake.check_member)  # key: project id
        self.missing: set[str] = set()
        self.known: dict[str, str] = {}  # number -> id, for v3 names and numeric lookups
        self.state = self.iam.policies

    def snapshot(self) -> dict:
        return {"iam": self.iam.policies}

    def project_id(self, ref: str) -> str:
        ref = ref.removeprefix("projects/")
        if ref in self.missing:
            raise GcpError(403, f"The caller does not have permission", "PERMISSION_DENIED",
                           "forbidden")
        if ref.isdigit():
            return self.known.get(ref, ref)
        self.known[project_number(ref)] = ref
        return ref

    def project_of(self, req: Request) -> str | None:
        # v1 names the project bare: projects/{resource}:getIamPolicy, projects/{projectId}.
        ref = req.params.get("resource") or req.params.get("projectId") or req.params.get("name") or ""
        return self.project_id(ref) if ref else None

    def policy(self, project: str) -> dict:
        """The project's policy (created with an owner binding on first sight)."""
        pid = self.project_id(project)
        if pid not in self.iam.policies:
            self.iam.set(pid, {"bindings": [{"role": "roles/owner", "members": [DEFAULT_OWNER]}]})
        return self.iam.get(pid)

    @handles("cloudresourcemanager.projects.get", versions=("v1",))
    def get_v1(self, req: Request) -> dict:
        pid = self.project_id(req.get("projectId"))
        return {"projectNumber": project_number(pid), "projectId": pid, "lifecycleState": "ACTIVE",
                "name": pid, "createTime": "2024-01-01T00:00:00.000Z",
                "parent": {"type": "organization", "id": "123456789012"}}

    @handles("cloudresourcemanager.projects.get", versions=("v3",))
    def get_v3(self, req: Request) -> dict:
        pid = self.project_id(req.get("name"))
        return {"name": f"projects/{project_number(pid)}", "projectId": pid, "state": "ACTIVE",
                "displayName": pid, "parent": "organizations/123456789012",
                "createTime": "2024-01-01T00:00:00.000Z", "etag": "W/\"1\""}

    @handles("cloudresourcemanager.projects.getIamPolicy")
    def get_iam_policy(self, req: Request) -> dict:
        return self.policy(req.get("resource"))

    @handles("cloudresourcemanager.projects.setIamPolicy")
    def set_iam_policy(self, req: Request) -> dict:
        pid = self.project_id(req.get("resource"))
        self.policy(pid)
        return self.iam.set(pid, (req.body or {}).get("policy") or {})
