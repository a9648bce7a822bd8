"""Service Usage v1: services get/list/batchGet/enable/disable/batchEnable and operations.

Whether an API is enabled here decides whether the fake answers its calls or returns the real
403 SERVICE_DISABLED error (see FakeGcp.disable_api)."""

from __future__ import annotations

from ..core.api import ApiModule, Request, handles, new_id, project_number
from ..core.errors import GcpError, invalid_argument, not_found

TITLES = {
    "sqladmin.googleapis.com": "Cloud SQL Admin API",
    "run.googleapis.com": "Cloud Run Admin API",
    "storage.googleapis.com": "Cloud Storage API",
    "storage-api.googleapis.com": "Google Cloud Storage JSON API",
    "iam.googleapis.com": "Identity and Access Management (IAM) API",
    "iamcredentials.googleapis.com": "IAM Service Account Credentials API",
    "cloudresourcemanager.googleapis.com": "Cloud Resource Manager API",
    "secretmanager.googleapis.com": "Secret Manager API",
    "artifactregistry.googleapis.com": "Artifact Registry API",
    "cloudbuild.googleapis.com": "Cloud Build API",
    "logging.googleapis.com": "Cloud Logging API",
    "cloudscheduler.googleapis.com": "Cloud Scheduler API",
    "serviceusage.googleapis.com": "Service Usage API",
    "compute.googleapis.com": "Compute Engine API",
}


# Google enables these in every new project (Cloud docs, "Services enabled by default").
ON_IN_NEW_PROJECTS = {"storage.googleapis.com", "storage-api.googleapis.com", "logging.googleapis.com",
                      "serviceusage.googleapis.com"}


class ServiceUsage(ApiModule):
    name = "serviceusage"
    versions = ("v1",)
    service = "serviceusage.googleapis.com"
    title = "Service Usage API"

    def reset(self) -> None:
        # "projects/<number>/services/<service>" -> "ENABLED" | "DISABLED" (explicit states only)
        self.state: dict[str, str] = {}
        self.ops: dict = {}
        self.enabled_at: dict[str, float] = {}  # key -> fake clock time it was enabled through the API

    # -- the switch the server consults ----------------------------------------------------

    def _key(self, project: str, service: str) -> str:
        return f"projects/{project_number(project)}/services/{service}"

    def set_state(self, project: str, service: str, value: str) -> None:
        self.state[self._key(project, service)] = value

    def forget(self, service: str) -> None:
        for key in [k for k in self.state if k.endswith(f"/services/{service}")]:
            del self.state[key]

    def is_usable(self, project: str | None, service: str) -> bool:
        """Enabled, and long enough ago for the rest of Google to know (FakeGcp.api_propagation_seconds)."""
        if not self.is_enabled(project, service):
            return False
        since = self.enabled_at.get(self._key(project, service)) if project is not None else None
        return since is None or self.fake.now() >= since + self.fake.api_propagation_seconds

    def is_enabled(self, project: str | None, service: str) -> bool:
        if project is not None:
            explicit = self.state.get(self._key(project, service))
            if explicit is not None:
                return explicit == "ENABLED"
        if service in self.fake.globally_disabled:
            return False
        return self.fake.services_enabled_by_default or service in ON_IN_NEW_PROJECTS

    # -- resources --------------------------------------------------------------------------

    def _split(self, name: str) -> tuple[str, str]:
        parts = name.split("/")
        if len(parts) != 4 or parts[0] not in ("projects", "folders", "organizations") or parts[2] != "services":
            raise invalid_argument(f"Invalid service name {name!r}.", field="name")
        return parts[1], parts[3]

    def _service(self, project: str, service: str) -> dict:
        number = project_number(project)
        return {
            "name": f"projects/{number}/services/{service}",
            "parent": f"projects/{number}",
            "config": {"name": service, "title": TITLES.get(service, service)},
            "state": "ENABLED" if self.is_enabled(project, service) else "DISABLED",
        }

    def _check_known(self, service: str) -> None:
        if not service.endswith(".googleapis.com"):
            raise GcpError(403, f"Not found or permission denied for service(s): {service}.",
                           "PERMISSION_DENIED", "forbidden")

    @handles("serviceusage.services.get")
    def get(self, req: Request) -> dict:
        project, service = self._split(req.get("name"))
        return self._service(project, service)

    @handles("serviceusage.services.batchGet")
    def batch_get(self, req: Request) -> dict:
        names = req.get("names") or []
        names = names if isinstance(names, list) else [names]
        return {"services": [self._service(*self._split(n)) for n in names]}

    @handles("serviceusage.services.list")
    def list(self, req: Request) -> dict:
        project = req.get("parent").split("/")[1]
        services = sorted(set(TITLES) | {k.rsplit("/", 1)[1] for k in self.state})
        items = [self._service(project, s) for s in services]
        flt = (req.get("filter") or "").replace(" ", "")
        if flt.startswith("state:"):
            items = [i for i in items if i["state"] == flt.split(":", 1)[1]]
        return {"services": items} if items else {}

    def _op(self, project: str, changes: list[tuple[str, str]], response_type: str, batch: bool):
        def done(op):
            if op.error is None:
                for service, value in changes:
                    if value == "ENABLED" and not self.is_enabled(project, service):
                        self.enabled_at[self._key(project, service)] = self.fake.now()
                    self.set_state(project, service, value)
            services = [self._service(project, s) for s, _ in changes]
            body = {"services": services} if batch else {"service": services[0]}
            return {"@type": f"type.googleapis.com/google.api.serviceusage.v1.{response_type}", **body}

        number = project_number(project)
        op = self.new_operation(f"operations/acat.p2-{number}-{new_id()}", done,
                                target=" ".join(s for s, _ in changes), metadata={
            "@type": "type.googleapis.com/google.api.serviceusage.v1.OperationMetadata",
            "resourceNames": [f"projects/{number}/services/{s}" for s, _ in changes]})
        self.ops[op.name] = op
        return op.lro()

    @handles("serviceusage.services.enable")
    def enable(self, req: Request) -> dict:
        project, service = self._split(req.get("name"))
        self._check_known(service)
        return self._op(project, [(service, "ENABLED")], "EnableServiceResponse", False)

    @handles("serviceusage.services.disable")
    def disable(self, req: Request) -> dict:
        project, service = self._split(req.get("name"))
        self._check_known(service)
        return self._op(project, [(service, "DISABLED")], "DisableServiceResponse", False)

    @handles("serviceusage.services.batchEnable")
    def batch_enable(self, req: Request) -> dict:
        project = req.get("parent").split("/")[1]
        ids = (req.body or {}).get("serviceIds") or []
        if not ids or len(ids) > 20:
            raise invalid_argument("serviceIds must name between 1 and 20 services.", field="serviceIds")
        for s in ids:
            self._check_known(s)
        return self._op(project, [(s, "ENABLED") for s in ids], "BatchEnableServicesResponse", True)

    @handles("serviceusage.operations.get")
    def operation(self, req: Request) -> dict:
        op = self.ops.get(req.get("name"))
        if op is None:
            raise not_found(f"Operation {req.get('name')}")
        op.poll()
        return op.lro()
