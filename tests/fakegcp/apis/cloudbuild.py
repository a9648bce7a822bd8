"""Cloud Build v1: builds create (-> operation -> build QUEUED, WORKING, SUCCESS) and get/list,
global and regional. A successful build reports results.images with a digest and records the
image in the fake Artifact Registry. A build whose storageSource object is missing in the fake
Cloud Storage fails (FAILURE, as a FETCHSOURCE step would); fail_next_operation("cloudbuild")
makes the next build fail.

A build with a user-specified serviceAccount is checked as Google checks it: at create, the
account must be `projects/{project}/serviceAccounts/{email}` of an existing account (else the
caller is refused actAs, as Cloud Run refuses it here too), and the build must name where its logs
go (logsBucket, options.defaultLogsBucketBehavior REGIONAL_USER_OWNED_BUCKET, or options.logging
CLOUD_LOGGING_ONLY / NONE), else 400 with Google's message; while it runs, the account needs to
read the source object (bucket or project role) and push to the repository (repository or project
role), else the build fails as on Google (FETCH_SOURCE_FAILED, or a push step denied).

The source is the tarball really uploaded: a `docker build` step runs against the Dockerfile in it,
and fails when the archive does not unpack, the Dockerfile is missing, or a --build-arg names no
ARG of the Dockerfile (build_source.py: docker only warns and drops the value; we refuse)."""

from __future__ import annotations

import base64
import copy
import hashlib
import re

from ..core.api import ApiModule, Operation, Request, handles, new_id, now, project_number
from ..core.errors import GcpError, invalid_argument
from . import build_source


class CloudBuild(ApiModule):
    name = "cloudbuild"
    versions = ("v1",)
    service = "cloudbuild.googleapis.com"
    title = "Cloud Build API"

    def reset(self) -> None:
        self.state: dict[str, dict] = {}  # build id -> Build
        self.ops: dict[str, Operation] = {}

    def project_of(self, req: Request) -> str | None:
        name = req.params.get("name") or ""
        if name.startswith("operations/build/"):  # the global operation: operations/build/{project}/{id}
            return name.split("/")[2]
        return super().project_of(req)

    def snapshot(self) -> dict:
        return {"builds": [f"{b['status']}:{','.join(b.get('images') or [])}" for b in self.state.values()]}

    def _create(self, req: Request, project: str, location: str) -> dict:
        body = copy.deepcopy(req.body or {})
        steps = body.get("steps") or []
        if not steps:
            raise invalid_argument("invalid build: build must have at least one step", field="build.steps")
        for i, step in enumerate(steps):
            if not step.get("name"):
                raise invalid_argument(f"invalid build: build step {i} must specify name", field=f"build.steps[{i}].name")
        account = self._check_account(project, body)
        build_id = new_id()[:8] + "-" + new_id()[:4] + "-" + new_id()[:4] + "-" + new_id()[:4] + "-" + new_id()[:12]
        number = project_number(project)
        build = {k: v for k, v in body.items() if k not in ("id", "status", "results", "createTime")}
        name = (f"projects/{number}/locations/{location}/builds/{build_id}")
        build.update({
            "name": name, "id": build_id, "projectId": project, "status": "QUEUED",
            "createTime": now(), "timeout": body.get("timeout", "600s"),
            "logUrl": f"https://console.cloud.google.com/cloud-build/builds;region={location}/{build_id}?project={number}",
            "logsBucket": body.get("logsBucket", f"gs://{number}.cloudbuild-logs.googleusercontent.com"),
            "options": body.get("options", {"logging": "LEGACY"}),
        })
        self.state[build_id] = build
        if location == "global":
            op_name = f"operations/build/{project}/{base64.b64encode(build_id.encode()).decode()}"
        else:
            op_name = f"projects/{number}/locations/{location}/operations/{new_id()}"

        def metadata():
            return {"@type": "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata",
                    "build": copy.deepcopy(build)}

        def done(op):
            build["startTime"] = build.get("startTime") or now()
            build["finishTime"] = now()
            source = (build.get("source") or {}).get("storageSource")
            missing = source and source.get("object") not in self.fake.modules["storage"].objects.get(source.get("bucket"), {})
            if op.error is None and missing:
                op.error = GcpError(400, f"failed to fetch source: gs://{source.get('bucket')}/{source.get('object')} not found",
                                    "FAILED_PRECONDITION")
            if op.error is None and account and source and not self._may_read(project, account, source.get("bucket")):
                missing = True
                op.error = GcpError(403, f"{account} does not have storage.objects.get access to the Google Cloud "
                                    f"Storage object. Permission 'storage.objects.get' denied on resource (or it may "
                                    f"not exist).", "PERMISSION_DENIED")
            if op.error is None and source:
                failed = self._run_steps(steps, source)
                if failed is not None:
                    missing, op.error = failed.fetch, GcpError(400, failed.message, "FAILED_PRECONDITION")
            denied = [uri for uri in build.get("images") or [] if account and not self._may_push(project, account, uri)]
            if op.error is None and denied:
                op.error = GcpError(403, f"denied: Permission 'artifactregistry.repositories.uploadArtifacts' denied "
                                    f"on resource {self._repo_of(denied[0])} (or it may not exist)", "PERMISSION_DENIED")
            if op.error is not None:
                build["status"] = "FAILURE"
                build["statusDetail"] = op.error.message
                build["failureInfo"] = {"type": "FETCH_SOURCE_FAILED" if missing else "USER_BUILD_STEP",
                                        "detail": op.error.message}
            else:
                build["status"] = "SUCCESS"
                images = []
                for uri in build.get("images") or []:
                    registry = self.fake.modules["artifactregistry"]
                    pushed = registry.add_image(uri)
                    digest = pushed["uri"].rsplit("@", 1)[1] if pushed else \
                        "sha256:" + hashlib.sha256(f"{uri}/{build_id}".encode()).hexdigest()
                    images.append({"name": uri, "digest": digest,
                                   "pushTiming": {"startTime": now(), "endTime": now()}})
                build["results"] = {"images": images, "buildStepImages": ["sha256:" + "0" * 64] * len(steps)}
            op.metadata = metadata()
            return {"@type": "type.googleapis.com/google.devtools.cloudbuild.v1.Build", **copy.deepcopy(build)}

        op = self.new_operation(op_name, done, metadata=metadata(),
                                target=f"{name} {' '.join(build.get('images') or [])}")
        if not op.done:
            build["status"] = "WORKING"
            build["startTime"] = now()
            op.metadata = metadata()
        self.ops[op_name] = op
        return op.lro()

    def _run_steps(self, steps: list[dict], source: dict) -> build_source.StepFailed | None:
        data = self.fake.modules["storage"].data.get((source.get("bucket"), source.get("object")), b"")
        try:
            build_source.check_steps(steps, build_source.unpack(data))
        except build_source.StepFailed as failed:
            return failed
        return None

    def _check_account(self, project: str, body: dict) -> str | None:
        """The email of the build's user-specified account, checked as at create; None without one."""
        value = body.get("serviceAccount")
        if not value:
            return None
        parts = value.split("/")
        if len(parts) != 4 or parts[0] != "projects" or parts[2] != "serviceAccounts" or not parts[3]:
            raise invalid_argument(f"invalid build: service account {value!r} must be of the form "
                                   "projects/{project}/serviceAccounts/{account}", field="build.service_account")
        email = parts[3]
        if email not in self.fake.modules["iam"].state:
            raise GcpError(403, f"Permission 'iam.serviceaccounts.actAs' denied on service account {email} "
                           "(or it may not exist).", "PERMISSION_DENIED")
        self.fake.check_account_reference(email, "build.service_account")
        options = body.get("options") or {}
        if not (body.get("logsBucket") or options.get("defaultLogsBucketBehavior") == "REGIONAL_USER_OWNED_BUCKET"
                or options.get("logging") in ("CLOUD_LOGGING_ONLY", "STACKDRIVER_ONLY", "NONE")):
            raise invalid_argument(
                "if 'build.service_account' is specified, the build must either (a) specify 'build.logs_bucket', "
                "(b) use the REGIONAL_USER_OWNED_BUCKET build.options.default_logs_bucket_behavior option, or "
                "(c) use either CLOUD_LOGGING_ONLY / NONE logging options", field="build.options.logging")
        return email

    def _roles(self, api: str, key: str, email: str) -> set[str]:
        policy = self.fake.modules[api].iam.policies.get(key) or {}
        return {b["role"] for b in policy.get("bindings", []) if f"serviceAccount:{email}" in b.get("members", [])}

    def _may_read(self, project: str, email: str, bucket: str) -> bool:
        roles = self._roles("storage", bucket, email) | self._roles("cloudresourcemanager", project, email)
        return bool(roles & {"roles/storage.objectViewer", "roles/storage.objectUser", "roles/storage.objectAdmin",
                             "roles/storage.admin", "roles/owner", "roles/editor"})

    @staticmethod
    def _repo_of(uri: str) -> str | None:
        m = re.fullmatch(r"([a-z0-9-]+)-docker\.pkg\.dev/([^/]+)/([^/]+)/.*", uri)
        return f"projects/{m.group(2)}/locations/{m.group(1)}/repositories/{m.group(3)}" if m else None

    def _may_push(self, project: str, email: str, uri: str) -> bool:
        repo = self._repo_of(uri)
        if repo is None:
            return True  # not a registry this fake models
        roles = self._roles("artifactregistry", repo, email) | self._roles("cloudresourcemanager", project, email)
        return bool(roles & {"roles/artifactregistry.writer", "roles/artifactregistry.repoAdmin",
                             "roles/artifactregistry.admin", "roles/owner", "roles/editor"})

    @handles("cloudbuild.projects.builds.create")
    def create(self, req: Request) -> dict:
        return self._create(req, req.get("projectId"), "global")

    @handles("cloudbuild.projects.locations.builds.create")
    def create_regional(self, req: Request) -> dict:
        parts = req.get("parent").split("/")
        return self._create(req, parts[1], parts[3])

    def _build(self, build_id: str) -> dict:
        # Reading a build advances its operation, as time passes for a client polling the build.
        build = self.state.get(build_id)
        if build is None:
            raise GcpError(404, f"Build {build_id} not found.", "NOT_FOUND")
        for op in self.ops.values():
            if not op.done and build_id in str(op.metadata.get("build", {}).get("id", "")):
                op.poll()
        return copy.deepcopy(build)

    @handles("cloudbuild.projects.builds.get")
    def get(self, req: Request) -> dict:
        return self._build(req.get("id"))

    @handles("cloudbuild.projects.locations.builds.get")
    def get_regional(self, req: Request) -> dict:
        return self._build(req.get("name").rsplit("/", 1)[-1])

    @handles("cloudbuild.projects.builds.list", "cloudbuild.projects.locations.builds.list")
    def list(self, req: Request) -> dict:
        project = req.get("projectId") or req.get("parent").split("/")[1]
        items = [copy.deepcopy(b) for b in reversed(list(self.state.values())) if b["projectId"] == project]
        flt = (req.get("filter") or "").strip()
        if flt:
            # Cloud Build filters by fields; the fake understands only tags="T", which finds a
            # build by the request tag its client gave it.
            m = re.fullmatch(r'tags\s*=\s*"([^"]+)"', flt)
            if m is None:
                raise GcpError(400, f"The fake understands only tags=\"T\" filters, not {flt!r}.",
                               "INVALID_ARGUMENT")
            items = [b for b in items if m.group(1) in (b.get("tags") or [])]
        return {"builds": items} if items else {}

    @handles("cloudbuild.operations.get", "cloudbuild.projects.locations.operations.get")
    def get_operation(self, req: Request) -> dict:
        op = self.ops.get(req.get("name"))
        if op is None:
            raise GcpError(404, "Operation not found.", "NOT_FOUND")
        op.poll()
        return op.lro()
