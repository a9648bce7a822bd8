"""Cloud Run Admin v2: services (with revisions, IAM, operations) and jobs (run -> executions).

Faithful where the deploy depends on it:
- services.patch replaces the whole service when no updateMask is given (v2 semantics), so a
  client must send everything it wants to keep;
- a template change creates a new revision named <service>-<generation:05d>-<suffix>; other
  changes (scaling, traffic, labels) do not;
- the API fills defaults (port 8080, 1 CPU / 512Mi, timeout 300s, default compute service
  account, concurrency 80, a TCP startup probe), so naive diffs show up as perpetual changes;
- a service account that does not exist in the fake's IAM is refused as Google refuses actAs;
- uri is https://<service>-<projectnumber>.<region>.run.app (also in urls).
"""

from __future__ import annotations

import copy
import re

from ..core.api import (ApiModule, IamPolicies, Operation, Request, apply_mask, handles, new_id,
                        now, project_number)
from ..core.errors import GcpError, already_exists, invalid_argument
from .run_common import _ENV, _ID, _RESERVED_ENV, SERVICE_INPUT, _ready, _suffix
from .run_jobs import RunJobs
from .run_knative import RunKnative



_MEMORY_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
_MEMORY = re.compile(r"^([0-9]+)(|k|M|G|Ki|Mi|Gi)$")
_GIB = 1024**3
# Cloud Run's documented limits (configuring/services/memory-limits and .../cpu): the least CPU
# each memory size needs, the least memory each CPU count needs, and the smallest memory of each
# execution environment (a job always runs in the second generation).
_CPU_FOR_MEMORY = ((24 * _GIB, 8), (16 * _GIB, 6), (8 * _GIB, 4), (4 * _GIB, 2))
_MEMORY_FOR_CPU = {4: 2 * _GIB, 6: 4 * _GIB, 8: 4 * _GIB}


def resource_problem(cpu: str, memory: str, environment: str, service: bool) -> str | None:
    """What Cloud Run says of a container's cpu/memory limits, or None when it accepts them."""
    m = _MEMORY.match(str(memory))
    if not m:
        return f"invalid memory quantity {memory!r}."
    mem = int(m.group(1)) * _MEMORY_UNITS[m.group(2)]
    text = str(cpu)
    try:
        cpus = int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return f"invalid cpu quantity {cpu!r}."
    if not 0.08 <= cpus <= 8 or (cpus > 1 and cpus != int(cpus)):
        return f"cpu {cpu!r}: expected 0.08 to 1, or a whole number up to 8."
    gen2 = environment == "EXECUTION_ENVIRONMENT_GEN2" or not service
    floor = 512 * 1024**2 if gen2 else 128 * 1024**2
    if mem < floor:
        return (f"memory {memory!r} is below the minimum of {'512Mi' if gen2 else '128Mi'} "
                f"for the {'second' if gen2 else 'first'} generation execution environment.")
    if mem > 32 * _GIB:
        return f"memory {memory!r} exceeds the maximum of 32Gi."
    for above, least in _CPU_FOR_MEMORY:
        if mem > above and cpus < least:
            return f"memory {memory!r} requires at least {least} CPUs; got {cpu!r}."
    if cpus < 1:
        if gen2:
            return "less than 1 CPU requires the first generation execution environment."
        if mem > _GIB or (mem > 512 * 1024**2 and cpus < 0.5):
            return f"memory {memory!r} requires at least {1 if mem > _GIB else 0.5} CPU; got {cpu!r}."
    need = _MEMORY_FOR_CPU.get(int(cpus)) if cpus == int(cpus) else None
    if need and mem < need:
        return f"{int(cpus)} CPUs require at least {need // _GIB}Gi of memory; got {memory!r}."
    return None

class Run(RunJobs, RunKnative, ApiModule):
    name = "run"
    versions = ("v2", "v1")  # v1: the Knative view gcloud reads and deploys through (run_knative.py)
    service = "run.googleapis.com"
    title = "Cloud Run Admin API"

    def reset(self) -> None:
        self.state: dict[str, dict] = {}  # service name -> Service
        self.revisions: dict[str, dict] = {}  # revision name -> Revision
        self.jobs: dict[str, dict] = {}  # job name -> Job
        self.executions: dict[str, dict] = {}  # execution name -> Execution
        self.ops: dict[str, Operation] = {}
        self.v1_rollouts: dict[str, str] = {}  # service name -> its last v1 write's operation
        self.iam = IamPolicies(member_check=self.fake.check_member)  # key: service or job name
        # Optional stand-in for a task's container: runner(project, job id, env, args) -> (error
        # it printed or None when it exited 0, its other output). Both go to the fake Cloud
        # Logging as the job's log. Tests set it to run the real entrypoint against a real
        # PostgreSQL; without it, migrations follow sqladmin's table owners (run_jobs.py).
        self.job_runner = None

    def snapshot(self) -> dict:
        return {"services": self.state, "revisions": sorted(self.revisions), "jobs": self.jobs,
                "executions": sorted(self.executions), "iam": self.iam.policies}

    def handler_for(self, version: str, method_id: str):
        # v1 shares method ids with v2 (run.projects.locations.services.get...) but not shapes:
        # only the handlers registered for v1 (the Knative view) answer v1 paths.
        if version == "v1":
            return self.handlers.get(("v1", method_id))
        return super().handler_for(version, method_id)

    # -- shared -------------------------------------------------------------------------

    @staticmethod
    def _split(parent: str) -> tuple[str, str]:
        parts = parent.split("/")
        return parts[1], parts[3]

    def _lro(self, parent: str, resource: dict, type_name: str, on_done) -> dict:
        project, region = self._split(parent)
        name = f"projects/{project}/locations/{region}/operations/{new_id()}"

        def done(op):
            result = on_done(op)
            return {"@type": f"type.googleapis.com/google.cloud.run.v2.{type_name}", **result}

        op = self.new_operation(name, done, target=f"{parent} {type_name}", metadata={
            "@type": f"type.googleapis.com/google.cloud.run.v2.{type_name}", **copy.deepcopy(resource)})
        self.ops[name] = op
        return op.lro()

    @handles("run.projects.locations.operations.get")
    def get_operation(self, req: Request) -> dict:
        op = self.ops.get(req.get("name"))
        if op is None:
            raise GcpError(404, f"Operation {req.get('name')} not found.", "NOT_FOUND")
        op.poll()
        return op.lro()

    def _check_account(self, project: str, account: str | None) -> None:
        if not account or account.endswith("-compute@developer.gserviceaccount.com"):
            return
        if account not in self.fake.modules["iam"].state:
            raise GcpError(403, f"Permission 'iam.serviceaccounts.actAs' denied on service "
                           f"account {account} (or it may not exist).", "PERMISSION_DENIED")
        self.fake.check_account_reference(account, "template.service_account")

    def _check_containers(self, template: dict, field: str, service: bool) -> None:
        containers = template.get("containers") or []
        if not containers:
            raise invalid_argument(f"{field}.containers: at least one container is required.",
                                   field=f"{field}.containers")
        volumes = {v.get("name") for v in template.get("volumes") or []}
        for v in template.get("volumes") or []:
            for inst in (v.get("cloudSqlInstance") or {}).get("instances") or []:
                if len(inst.split(":")) != 3:
                    raise invalid_argument(f"Invalid Cloud SQL instance connection name {inst!r}; "
                                           "expected project:region:instance.",
                                           field=f"{field}.volumes.cloudSqlInstance.instances")
        ported = 0
        for i, c in enumerate(containers):
            where = f"{field}.containers[{i}]"
            if not c.get("image"):
                raise invalid_argument(f"{where}.image: Required.", field=f"{where}.image")
            ported += bool(c.get("ports"))
            names = set()
            for env in c.get("env") or []:
                name = env.get("name") or ""
                if not _ENV.fullmatch(name) or name in _RESERVED_ENV:
                    raise invalid_argument(f"{where}.env: invalid or reserved name {name!r}.",
                                           field=f"{where}.env.name")
                if name in names:
                    raise invalid_argument(f"{where}.env: duplicate name {name!r}.",
                                           field=f"{where}.env.name")
                names.add(name)
                if "value" in env and env.get("valueSource"):
                    raise invalid_argument(f"{where}.env[{name}]: value and valueSource are "
                                           "mutually exclusive.", field=f"{where}.env.valueSource")
                ref = (env.get("valueSource") or {}).get("secretKeyRef")
                if ref is not None and not ref.get("secret"):
                    raise invalid_argument(f"{where}.env[{name}]: secretKeyRef.secret is required.",
                                           field=f"{where}.env.valueSource.secretKeyRef.secret")
            limits = (c.get("resources") or {}).get("limits") or {}
            problem = resource_problem(limits.get("cpu", "1"), limits.get("memory", "512Mi"),
                                       template.get("executionEnvironment", ""), service)
            if problem:
                raise invalid_argument(f"{where}.resources.limits: {problem}", field=f"{where}.resources.limits")
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    raise invalid_argument(f"{where}.volumeMounts: volume {m.get('name')!r} is not "
                                           "defined.", field=f"{where}.volumeMounts.name")
        if service and ported > 1:
            raise invalid_argument(f"{field}: only one container may declare a port.",
                                   field=f"{field}.containers.ports")

    _SECRET_READERS = {"roles/secretmanager.secretAccessor", "roles/secretmanager.admin", "roles/owner"}

    def secret_problem(self, project: str, template: dict) -> str | None:
        """Why a revision or task could not read its secrets, as Cloud Run reports it, or None.

        A referenced secret must exist, and the runtime service account must be allowed to
        access it (Secret Manager Secret Accessor on the secret or the project)."""
        secrets = self.fake.modules["secretmanager"]
        account = template.get("serviceAccount") or ""
        member = f"serviceAccount:{account}"
        refs = [(env.get("valueSource") or {}).get("secretKeyRef") for c in template.get("containers") or []
                for env in c.get("env") or []]
        refs += [v.get("secret") for v in template.get("volumes") or []]
        for ref in filter(None, refs):
            secret = ref.get("secret", "")
            if not secrets.has_secret(project, secret):
                return f"Secret projects/{project}/secrets/{secret}/versions/latest was not found"
            name = secrets.canonical(secret if secret.startswith("projects/")
                                     else f"projects/{project}/secrets/{secret}")
            policies = [secrets.iam.get(name), self.fake.modules["cloudresourcemanager"].policy(project)]
            if not any(member in b.get("members", []) and b.get("role") in self._SECRET_READERS
                       for p in policies for b in p.get("bindings", [])):
                return (f"Permission denied on secret: {name}/versions/"
                        f"{ref.get('version', 'latest')} for Revision service account {account}. "
                        "The service account used must be granted the 'Secret Manager Secret "
                        "Accessor' role (roles/secretmanager.secretAccessor) at the secret, "
                        "project or higher level.")
        return None

    @staticmethod
    def _container_defaults(c: dict, service: bool) -> None:
        c.setdefault("resources", {}).setdefault("limits", {})
        c["resources"]["limits"].setdefault("cpu", "1000m")
        c["resources"]["limits"].setdefault("memory", "512Mi")
        if service:
            c["resources"].setdefault("cpuIdle", True)
            if not c.get("ports"):
                c["ports"] = [{"name": "http1", "containerPort": 8080}]
            for p in c["ports"]:
                p.setdefault("containerPort", 8080)
                p.setdefault("name", "http1")
            c.setdefault("startupProbe", {"timeoutSeconds": 240, "periodSeconds": 240,
                                          "failureThreshold": 1,
                                          "tcpSocket": {"port": c["ports"][0]["containerPort"]}})

    # -- services -----------------------------------------------------------------------

    def service_missing(self, name: str) -> GcpError:
        return GcpError(404, f"Resource '{name.rsplit('/', 1)[-1]}' of kind 'SERVICE' in region "
                        f"'{name.split('/')[3]}' in project '{name.split('/')[1]}' does not exist.",
                        "NOT_FOUND")

    def _service(self, name: str) -> dict:
        svc = self.state.get(name)
        if svc is None:
            raise self.service_missing(name)
        return svc

    def _template(self, project: str, svc: dict) -> dict:
        tpl = svc.setdefault("template", {})
        tpl.setdefault("timeout", "300s")
        tpl.setdefault("serviceAccount", f"{project_number(project)}-compute@developer.gserviceaccount.com")
        tpl.setdefault("maxInstanceRequestConcurrency", 80)
        tpl.setdefault("scaling", {}).setdefault("maxInstanceCount", 100)
        for c in tpl.get("containers") or []:
            self._container_defaults(c, service=True)
        return tpl

    def _roll(self, svc: dict, force: bool, previous_template: dict | None) -> str | None:
        """Create a revision if the template changed; return the revision name or None."""
        project, region = self._split(svc["name"])
        sid = svc["name"].rsplit("/", 1)[-1]
        tpl = svc["template"]
        comparable = {k: v for k, v in tpl.items() if k != "revision"}
        prev = {k: v for k, v in (previous_template or {}).items() if k != "revision"}
        if previous_template is not None and comparable == prev and not force and not tpl.get("revision"):
            return None
        gen = svc["generation"]
        rev_id = tpl.get("revision") or f"{sid}-{int(gen):05d}-{_suffix(svc['name'], gen)}"
        if not rev_id.startswith(sid + "-"):
            raise invalid_argument(f"template.revision must start with '{sid}-'.", field="template.revision")
        rev_name = f"projects/{project}/locations/{region}/services/{sid}/revisions/{rev_id}"
        if rev_name in self.revisions:
            raise GcpError(409, f"Revision named '{rev_id}' with different configuration already "
                           "exists.", "ALREADY_EXISTS")
        revision = {k: copy.deepcopy(v) for k, v in comparable.items()}
        revision.update({"name": rev_name, "uid": new_id(), "generation": "1", "createTime": now(),
                         "updateTime": now(), "service": sid, "launchStage": "GA",
                         "reconciling": True, "conditions": [], "etag": new_id()})
        self.revisions[rev_name] = revision
        svc["latestCreatedRevision"] = rev_name
        return rev_name

    def _start(self, svc: dict, rev_name: str | None) -> dict:
        """Mark reconciling and return an operation that makes the service Ready when done."""
        project, _ = self._split(svc["name"])
        svc["reconciling"] = True
        svc["terminalCondition"] = {"type": "Ready", "state": "CONDITION_RECONCILING",
                                    "lastTransitionTime": now()}

        def done(op):
            if svc["name"] not in self.state:
                return svc
            problem = self.secret_problem(project, svc["template"])
            if op.error is None and problem:
                op.error = GcpError(400, f"Revision '{(rev_name or '').rsplit('/', 1)[-1]}' is not "
                                    f"ready and cannot serve traffic. {problem}",
                                    "FAILED_PRECONDITION")
            svc["reconciling"] = False
            svc["observedGeneration"] = svc["generation"]
            if op.error is not None:
                svc["terminalCondition"] = {"type": "Ready", "state": "CONDITION_FAILED",
                                            "message": op.error.message, "lastTransitionTime": now()}
                if rev_name in self.revisions:
                    self.revisions[rev_name]["reconciling"] = False
                    self.revisions[rev_name]["conditions"] = [
                        {"type": "Ready", "state": "CONDITION_FAILED", "message": op.error.message}]
                return svc
            if rev_name:
                rev = self.revisions[rev_name]
                rev["reconciling"] = False
                rev["conditions"] = [_ready(), _ready("ContainerHealthy"), _ready("ResourcesAvailable")]
                svc["latestReadyRevision"] = rev_name
            svc["terminalCondition"] = _ready()
            svc["conditions"] = [_ready("RoutesReady"), _ready("ConfigurationsReady")]
            svc["trafficStatuses"] = self._traffic_status(svc)
            return self._public(svc)

        return self._lro(svc["name"], self._public(svc), "Service", done)

    def _traffic_status(self, svc: dict) -> list[dict]:
        out = []
        for t in svc.get("traffic") or []:
            entry = {k: v for k, v in t.items() if k in ("type", "revision", "percent", "tag")}
            if entry.get("type") == "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST":
                entry.pop("revision", None)
            out.append(entry)
        return out

    @staticmethod
    def _public(svc: dict) -> dict:
        return copy.deepcopy(svc)

    def _check_service_input(self, project: str, body: dict) -> None:
        tpl = body.get("template") or {}
        self._check_containers(tpl, "template", service=True)
        self._check_account(project, tpl.get("serviceAccount"))
        scaling = tpl.get("scaling") or {}
        lo, hi = scaling.get("minInstanceCount"), scaling.get("maxInstanceCount")
        if lo is not None and hi is not None and int(lo) > int(hi):
            raise invalid_argument("template.scaling.minInstanceCount must not exceed "
                                   "maxInstanceCount.", field="template.scaling")
        for t in body.get("traffic") or []:
            if t.get("type") == "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION":
                rev = f"{body.get('name', '')}/revisions/{t.get('revision', '')}"
                if rev not in self.revisions:
                    raise invalid_argument(f"Revision named '{t.get('revision')}' does not exist.",
                                           field="traffic.revision")
        total = sum(int(t.get("percent") or 0) for t in body.get("traffic") or [])
        if body.get("traffic") and total != 100:
            raise invalid_argument("traffic percentages must sum to 100.", field="traffic")

    @handles("run.projects.locations.services.create")
    def create(self, req: Request) -> dict:
        parent = req.get("parent")
        project, region = self._split(parent)
        sid = req.get("serviceId") or ""
        if not _ID.fullmatch(sid):
            raise invalid_argument("service_id must be 1-49 lowercase letters, digits or hyphens, "
                                   "starting with a letter.", field="service_id")
        name = f"{parent}/services/{sid}"
        if name in self.state:
            raise already_exists(f"Resource '{sid}'")
        body = copy.deepcopy(req.body or {})
        self._check_service_input(project, body)
        if req.get("validateOnly") in (True, "true"):
            return {"name": f"{parent}/operations/validate", "done": True}
        number = project_number(project)
        url = f"https://{sid}-{number}.{region}.run.app"
        svc = {k: body[k] for k in SERVICE_INPUT if k in body}
        svc.update({
            "name": name, "uid": new_id(), "generation": "1", "createTime": now(),
            "updateTime": now(), "creator": "fake-user@example.com",
            "lastModifier": "fake-user@example.com", "etag": new_id(),
            "uri": url,
            "urls": [url, f"https://{sid}-{_suffix(sid, project, n=10)}-{region[:2]}.a.run.app"],
        })
        svc.setdefault("ingress", "INGRESS_TRAFFIC_ALL")
        svc.setdefault("launchStage", "GA")
        svc.setdefault("traffic", [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}])
        self._template(project, svc)
        rev = self._roll(svc, True, None)
        self.state[name] = svc
        return self._start(svc, rev)

    @handles("run.projects.locations.services.get")
    def get(self, req: Request) -> dict:
        return self._public(self._service(req.get("name")))

    @handles("run.projects.locations.services.list")
    def list(self, req: Request) -> dict:
        prefix = req.get("parent") + "/services/"
        items = [self._public(s) for n, s in sorted(self.state.items()) if n.startswith(prefix)]
        return {"services": items} if items else {}

    @handles("run.projects.locations.services.patch")
    def patch(self, req: Request) -> dict:
        name = req.get("name")
        project, region = self._split(name)
        if name not in self.state:
            if req.get("allowMissing") in (True, "true"):
                req.params["parent"] = name.rsplit("/services/", 1)[0]
                req.params["serviceId"] = name.rsplit("/", 1)[-1]
                return self.create(req)
            raise self.service_missing(name)
        svc = self.state[name]
        body = copy.deepcopy(req.body or {})
        etag = body.get("etag")
        if etag and etag != svc["etag"]:
            raise GcpError(409, "The service has been modified since it was read (etag "
                           "mismatch).", "ABORTED")
        new = copy.deepcopy(svc)
        given = {k: body[k] for k in SERVICE_INPUT if k in body}
        mask = req.get("updateMask")
        if mask:
            apply_mask(new, given, mask)
        else:
            for k in SERVICE_INPUT:
                new.pop(k, None)
            new.update(given)
            new.setdefault("ingress", "INGRESS_TRAFFIC_ALL")
            new.setdefault("launchStage", "GA")
            new.setdefault("traffic", [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}])
        self._check_service_input(project, new)
        if req.get("validateOnly") in (True, "true"):
            return {"name": f"projects/{project}/locations/{region}/operations/validate", "done": True}
        self._template(project, new)
        new["generation"] = str(int(svc["generation"]) + 1)
        new["updateTime"] = now()
        new["etag"] = new_id()
        new["lastModifier"] = "fake-user@example.com"
        rev = self._roll(new, req.get("forceNewRevision") in (True, "true"), svc.get("template"))
        self.state[name] = new
        return self._start(new, rev)

    @handles("run.projects.locations.services.delete")
    def delete(self, req: Request) -> dict:
        name = req.get("name")
        svc = self._service(name)
        del self.state[name]
        for r in [r for r in self.revisions if r.startswith(name + "/revisions/")]:
            del self.revisions[r]
        self.iam.delete(name)
        snapshot = self._public(svc)
        return self._lro(name, snapshot, "Service", lambda op: snapshot)

    @handles("run.projects.locations.services.getIamPolicy", "run.projects.locations.jobs.getIamPolicy")
    def get_iam_policy(self, req: Request) -> dict:
        name = req.get("resource")
        if name not in self.state and name not in self.jobs:
            raise self.service_missing(name)
        return self.iam.get(name)

    @handles("run.projects.locations.services.setIamPolicy", "run.projects.locations.jobs.setIamPolicy")
    def set_iam_policy(self, req: Request) -> dict:
        name = req.get("resource")
        if name not in self.state and name not in self.jobs:
            raise self.service_missing(name)
        return self.iam.set(name, (req.body or {}).get("policy") or {})

    @handles("run.projects.locations.services.revisions.list")
    def list_revisions(self, req: Request) -> dict:
        prefix = req.get("parent") + "/revisions/"
        items = [copy.deepcopy(r) for n, r in self.revisions.items() if n.startswith(prefix)]
        items.reverse()  # newest first, as Cloud Run lists them
        return {"revisions": items} if items else {}

    @handles("run.projects.locations.services.revisions.get")
    def get_revision(self, req: Request) -> dict:
        rev = self.revisions.get(req.get("name"))
        if rev is None:
            raise GcpError(404, f"Revision {req.get('name')} does not exist.", "NOT_FOUND")
        return copy.deepcopy(rev)
