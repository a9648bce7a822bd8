"""Cloud Run v1 (Knative serving) as a second view of the v2 services: `gcloud run services
describe/list` read back what the tool deployed, and `gcloud run deploy` writes through it
(namespaces.services.create / replaceService become v2 create / full-replace patch on the same
state; the v1 GET advances the rollout gcloud waits on, since v1 has no operation to poll;
--allow-unauthenticated is v1 projects.locations.services.get/setIamPolicy on the v2 policy).
gcloud talks to the regional endpoint
https://REGION-run.googleapis.com: with api_endpoint_overrides/run = <root>/run/ it derives
http://REGION-<host>/run/..., which reaches the fake when the fake is also gcloud's HTTP proxy
(tests.fakegcp.gcloud sets that up); the region is then read from the Host header."""

from __future__ import annotations

import re

import copy

from ..core.api import Request, handles, project_number
from ..core.errors import GcpError, invalid_argument

_STATUS = {"CONDITION_SUCCEEDED": "True", "CONDITION_FAILED": "False"}
_INGRESS = {"INGRESS_TRAFFIC_ALL": "all", "INGRESS_TRAFFIC_INTERNAL_ONLY": "internal",
            "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER": "internal-and-cloud-load-balancing"}


def _region(req: Request) -> str | None:
    host = {k.lower(): v for k, v in req.headers.items()}.get("host", "")
    m = re.match(r"([a-z]+-[a-z]+\d+)-", host)
    return m.group(1) if m else None


def _condition(c: dict) -> dict:
    out = {"type": c.get("type"), "status": _STATUS.get(c.get("state"), "Unknown")}
    for key in ("lastTransitionTime", "message", "reason"):
        if c.get(key):
            out[key] = c[key]
    return out


def _container(c: dict, sql_volumes: set) -> dict:
    out = {k: c[k] for k in ("name", "image", "command", "args", "workingDir", "startupProbe",
                             "livenessProbe") if k in c}
    out["ports"] = [{"name": p.get("name", "http1"), "containerPort": p.get("containerPort", 8080)}
                    for p in c.get("ports") or []]
    env = []
    for e in c.get("env") or []:
        ref = (e.get("valueSource") or {}).get("secretKeyRef")
        if ref:
            env.append({"name": e["name"], "valueFrom": {"secretKeyRef": {
                "name": ref["secret"].rsplit("/", 1)[-1], "key": ref.get("version", "latest")}}})
        else:
            env.append({"name": e["name"], "value": e.get("value", "")})
    if env:
        out["env"] = env
    if c.get("resources", {}).get("limits"):
        out["resources"] = {"limits": c["resources"]["limits"]}
    # v1 has no Cloud SQL volume (its annotation mounts /cloudsql): hide the v2 mount of one.
    mounts = [m for m in c.get("volumeMounts") or [] if m.get("name") not in sql_volumes]
    if mounts:
        out["volumeMounts"] = mounts
    return out


def knative_service(svc: dict) -> dict:
    """The v1 (Knative) shape of a v2 Service."""
    _, project, _, region, _, sid = svc["name"].split("/")
    tpl = svc.get("template") or {}
    scaling = tpl.get("scaling") or {}
    tpl_annotations = {}
    if "minInstanceCount" in scaling:
        tpl_annotations["autoscaling.knative.dev/minScale"] = str(scaling["minInstanceCount"])
    if "maxInstanceCount" in scaling:
        tpl_annotations["autoscaling.knative.dev/maxScale"] = str(scaling["maxInstanceCount"])
    sql = [i for v in tpl.get("volumes") or [] for i in (v.get("cloudSqlInstance") or {}).get("instances") or []]
    sql_volumes = {v.get("name") for v in tpl.get("volumes") or [] if v.get("cloudSqlInstance")}
    if sql:
        tpl_annotations["run.googleapis.com/cloudsql-instances"] = ",".join(sql)
    containers = tpl.get("containers") or []
    if any(c.get("resources", {}).get("startupCpuBoost") for c in containers):
        tpl_annotations["run.googleapis.com/startup-cpu-boost"] = "true"
    if containers and containers[0].get("resources", {}).get("cpuIdle") is False:
        tpl_annotations["run.googleapis.com/cpu-throttling"] = "false"
    tpl_meta = {"annotations": tpl_annotations}
    if tpl.get("labels"):
        tpl_meta["labels"] = dict(tpl["labels"])
    if (svc.get("latestCreatedRevision") or "").rsplit("/", 1)[-1] and tpl.get("revision"):
        tpl_meta["name"] = tpl["revision"]
    latest_ready = (svc.get("latestReadyRevision") or "").rsplit("/", 1)[-1]
    conditions = [svc["terminalCondition"]] if svc.get("terminalCondition") else []
    conditions += svc.get("conditions") or []
    number = project_number(project)
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": sid, "namespace": number, "uid": svc.get("uid"),
            "selfLink": f"/apis/serving.knative.dev/v1/namespaces/{number}/services/{sid}",
            "resourceVersion": svc.get("etag"), "generation": int(svc.get("generation", 1)),
            "creationTimestamp": svc.get("createTime"),
            "labels": {**(svc.get("labels") or {}), "cloud.googleapis.com/location": region},
            "annotations": {**(svc.get("annotations") or {}),
                            "run.googleapis.com/ingress": _INGRESS.get(svc.get("ingress"), "all"),
                            # v2's invokerIamDisabled, as the v1 API shows it (gcloud reads this)
                            **({"run.googleapis.com/invoker-iam-disabled": "true"}
                               if svc.get("invokerIamDisabled") else {}),
                            "serving.knative.dev/creator": svc.get("creator", ""),
                            "serving.knative.dev/lastModifier": svc.get("lastModifier", "")},
        },
        "spec": {
            "template": {"metadata": tpl_meta, "spec": {
                "containerConcurrency": tpl.get("maxInstanceRequestConcurrency", 80),
                "timeoutSeconds": int(str(tpl.get("timeout", "300s")).rstrip("s") or 300),
                "serviceAccountName": tpl.get("serviceAccount", ""),
                "containers": [_container(c, sql_volumes) for c in containers],
            }},
            "traffic": [{"percent": t.get("percent", 0),
                         **({"latestRevision": True} if t.get("type", "").endswith("LATEST")
                            else {"revisionName": t.get("revision", "")})}
                        for t in svc.get("traffic") or []],
        },
        "status": {
            "observedGeneration": int(svc.get("observedGeneration") or 0),
            "conditions": [_condition(c) for c in conditions],
            "latestReadyRevisionName": latest_ready,
            "latestCreatedRevisionName": (svc.get("latestCreatedRevision") or "").rsplit("/", 1)[-1],
            "traffic": [{"revisionName": latest_ready, "percent": t.get("percent", 0),
                         "latestRevision": True} for t in svc.get("trafficStatuses") or []],
            "url": svc.get("uri"), "address": {"url": svc.get("uri")},
        },
    }


_V2_INGRESS = {v: k for k, v in _INGRESS.items()}
# Annotations the v1 API keeps for itself (output, or mapped onto v2 fields below).
_SYSTEM = ("run.googleapis.com/", "serving.knative.dev/", "autoscaling.knative.dev/",
           "client.knative.dev/", "cloud.googleapis.com/")


def _user(meta: dict | None) -> dict:
    return {k: v for k, v in (meta or {}).items() if not k.startswith(_SYSTEM)}


def _v2_container(c: dict, where: str) -> dict:
    out = {k: copy.deepcopy(c[k]) for k in ("image", "command", "args", "workingDir", "startupProbe",
                                             "livenessProbe", "volumeMounts") if c.get(k)}
    if c.get("name"):
        out["name"] = c["name"]
    if c.get("ports"):
        out["ports"] = [{k: p[k] for k in ("name", "containerPort") if k in p} for p in c["ports"]]
    env = []
    for e in c.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if e.get("valueFrom") and not ref:
            raise invalid_argument(f"{where}.env[{e.get('name')}].valueFrom: only secretKeyRef is "
                                   "supported.", field=f"{where}.env.valueFrom")
        if ref is not None:
            if "value" in e:
                raise invalid_argument(f"{where}.env[{e.get('name')}]: value and valueFrom are "
                                       "mutually exclusive.", field=f"{where}.env.valueFrom")
            env.append({"name": e.get("name"), "valueSource": {"secretKeyRef": {
                "secret": ref.get("name", ""), "version": ref.get("key", "latest")}}})
        else:
            env.append({"name": e.get("name"), "value": e.get("value", "")})
    if env:
        out["env"] = env
    if (c.get("resources") or {}).get("limits"):
        out["resources"] = {"limits": dict(c["resources"]["limits"])}
    return out


def v2_from_knative(body: dict, namespace: str, name: str | None = None) -> dict:
    """The v2 Service body a v1 (Knative) Service body stands for; refuses what v1 refuses."""
    if not isinstance(body, dict) or body.get("apiVersion") != "serving.knative.dev/v1" \
            or body.get("kind") != "Service":
        raise invalid_argument("apiVersion must be 'serving.knative.dev/v1' and kind 'Service'.",
                               field="apiVersion")
    meta = body.get("metadata") or {}
    if not meta.get("name"):
        raise invalid_argument("metadata.name: Required.", field="metadata.name")
    if name is not None and meta["name"] != name:
        raise invalid_argument(f"metadata.name {meta['name']!r} does not match the name in the "
                               f"URL {name!r}.", field="metadata.name")
    if meta.get("namespace") not in (None, namespace, project_number(namespace)):
        raise invalid_argument(f"metadata.namespace {meta['namespace']!r} does not match the "
                               f"namespace in the URL {namespace!r}.", field="metadata.namespace")
    annotations = meta.get("annotations") or {}
    out: dict = {"labels": _user(meta.get("labels")), "annotations": _user(annotations)}
    for key, field in (("run.googleapis.com/client-name", "client"),
                       ("run.googleapis.com/client-version", "clientVersion"),
                       ("run.googleapis.com/launch-stage", "launchStage")):
        if annotations.get(key):
            out[field] = annotations[key]
    if annotations.get("run.googleapis.com/ingress"):
        ingress = _V2_INGRESS.get(annotations["run.googleapis.com/ingress"])
        if ingress is None:
            raise invalid_argument(f"Invalid ingress {annotations['run.googleapis.com/ingress']!r}.",
                                   field="metadata.annotations")
        out["ingress"] = ingress
    if str(annotations.get("run.googleapis.com/invoker-iam-disabled", "")).lower() == "true":
        out["invokerIamDisabled"] = True
    spec = body.get("spec") or {}
    template = spec.get("template") or {}
    tpl_meta, tpl_spec = template.get("metadata") or {}, template.get("spec") or {}
    if tpl_spec.get("volumes"):
        raise GcpError(501, "The fake does not implement v1 template volumes.", "UNIMPLEMENTED")
    containers = tpl_spec.get("containers") or []
    if not containers:
        raise invalid_argument("spec.template.spec.containers: Required.",
                               field="spec.template.spec.containers")
    tpl: dict = {"containers": [_v2_container(c, f"spec.template.spec.containers[{i}]")
                                for i, c in enumerate(containers)]}
    if tpl_meta.get("labels"):  # gcloud's client.knative.dev/nonce among them
        tpl["labels"] = dict(tpl_meta["labels"])
    if tpl_meta.get("name"):
        tpl["revision"] = tpl_meta["name"]
    tpl_ann = tpl_meta.get("annotations") or {}
    scaling = {}
    for key, field in (("autoscaling.knative.dev/minScale", "minInstanceCount"),
                       ("autoscaling.knative.dev/maxScale", "maxInstanceCount")):
        if key in tpl_ann:
            if not str(tpl_ann[key]).isdigit():
                raise invalid_argument(f"{key} must be a non-negative integer, not {tpl_ann[key]!r}.",
                                       field="spec.template.metadata.annotations")
            scaling[field] = int(tpl_ann[key])
    if scaling:
        tpl["scaling"] = scaling
    sql = [i for i in str(tpl_ann.get("run.googleapis.com/cloudsql-instances", "")).split(",") if i]
    if sql:
        # v1's annotation mounts the Cloud SQL sockets at /cloudsql; v2 spells that as a volume.
        tpl["volumes"] = [{"name": "cloudsql", "cloudSqlInstance": {"instances": sql}}]
        for c in tpl["containers"]:
            c.setdefault("volumeMounts", []).append({"name": "cloudsql", "mountPath": "/cloudsql"})
    first = tpl["containers"][0]
    if str(tpl_ann.get("run.googleapis.com/startup-cpu-boost", "")).lower() == "true":
        first.setdefault("resources", {})["startupCpuBoost"] = True
    if str(tpl_ann.get("run.googleapis.com/cpu-throttling", "")).lower() == "false":
        first.setdefault("resources", {})["cpuIdle"] = False
    if "containerConcurrency" in tpl_spec:
        tpl["maxInstanceRequestConcurrency"] = int(tpl_spec["containerConcurrency"])
    if "timeoutSeconds" in tpl_spec:
        tpl["timeout"] = f"{int(tpl_spec['timeoutSeconds'])}s"
    if tpl_spec.get("serviceAccountName"):
        tpl["serviceAccount"] = tpl_spec["serviceAccountName"]
    out["template"] = tpl
    traffic = []
    for t in spec.get("traffic") or []:
        entry = {"percent": int(t.get("percent") or 0)}
        if t.get("latestRevision"):
            entry["type"] = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
        else:
            entry.update(type="TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", revision=t.get("revisionName", ""))
        if t.get("tag"):
            entry["tag"] = t["tag"]
        traffic.append(entry)
    if traffic:
        out["traffic"] = traffic
    return out


class RunKnative:
    def _v1_services(self, namespace: str, region: str | None) -> list[dict]:
        ids = {namespace, project_number(namespace)}
        out = []
        for name, svc in sorted(self.state.items()):
            _, project, _, loc, _, _ = name.split("/")
            if (project in ids or project_number(project) in ids) and region in (None, loc):
                out.append(svc)
        return out

    @handles("run.namespaces.services.get", versions=("v1",))
    def v1_get_service(self, req: Request) -> dict:
        _, namespace, _, sid = req.get("name").split("/")
        for svc in self._v1_services(namespace, _region(req)):
            if svc["name"].endswith(f"/services/{sid}"):
                # v1 writes return no operation: reading the service is what advances the
                # rollout (gcloud polls this GET until Ready is True).
                op = self.ops.get(self.v1_rollouts.get(svc["name"], ""))
                if op is not None:
                    op.poll()
                return knative_service(self.state[svc["name"]])
        raise GcpError(404, f"Resource '{sid}' of kind 'SERVICE' in region "
                       f"'{_region(req)}' in project '{namespace}' does not exist.", "NOT_FOUND")

    @handles("run.namespaces.services.list", versions=("v1",))
    def v1_list_services(self, req: Request) -> dict:
        namespace = req.get("parent").split("/")[1]
        return {"apiVersion": "serving.knative.dev/v1", "kind": "ServiceList", "metadata": {},
                "items": [knative_service(s) for s in self._v1_services(namespace, _region(req))]}

    def _v1_write(self, req: Request, name: str | None) -> dict:
        region = _region(req)
        if region is None:
            raise invalid_argument("Cloud Run v1 writes go to a regional endpoint "
                                   "(https://REGION-run.googleapis.com).", field="region")
        path = req.get("name") if name else req.get("parent")
        namespace = path.split("/")[1]
        if namespace.isdigit():
            raise GcpError(501, "The fake takes the project id, not its number, as a v1 namespace.",
                           "UNIMPLEMENTED")
        body = v2_from_knative(req.body, namespace, name)
        parent = f"projects/{namespace}/locations/{region}"
        sid = body_name = (req.body.get("metadata") or {})["name"]
        dry = req.get("dryRun") not in (None, "")
        inner = Request(method=req.method, api=req.api, version="v2", method_id=req.method_id,
                        path=req.path, params={"validateOnly": dry}, body=body, headers=req.headers)
        if name is None:
            inner.params.update(parent=parent, serviceId=sid)
            op = self.create(inner)
        else:
            full = f"{parent}/services/{body_name}"
            if full not in self.state:
                raise self.service_missing(full)
            etag = (req.body.get("metadata") or {}).get("resourceVersion")
            if etag and etag != self.state[full]["etag"]:
                raise GcpError(409, "The service has been modified since it was read "
                               "(metadata.resourceVersion mismatch).", "ABORTED")
            inner.params["name"] = full
            op = self.patch(inner)
        full = f"{parent}/services/{sid}"
        if dry:
            return knative_service({**body, "name": full, "etag": "", "generation": "0"})
        self.v1_rollouts[full] = op["name"]
        return knative_service(self.state[full])

    @handles("run.namespaces.services.create", versions=("v1",))
    def v1_create_service(self, req: Request) -> dict:
        return self._v1_write(req, None)

    @handles("run.namespaces.services.replaceService", versions=("v1",))
    def v1_replace_service(self, req: Request) -> dict:
        return self._v1_write(req, req.get("name").split("/")[-1])

    @handles("run.projects.locations.services.getIamPolicy", versions=("v1",))
    def v1_get_iam_policy(self, req: Request) -> dict:
        return self.get_iam_policy(req)

    @handles("run.projects.locations.services.setIamPolicy", versions=("v1",))
    def v1_set_iam_policy(self, req: Request) -> dict:
        return self.set_iam_policy(req)
