"""A read-only Cloud Run v1 (Knative serving) view of the v2 services, so `gcloud run services
describe/list` can read back what the tool deployed. gcloud talks to the regional endpoint
https://REGION-run.googleapis.com: with api_endpoint_overrides/run = <root>/run/ it derives
http://REGION-<host>/run/..., which reaches the fake when the fake is also gcloud's HTTP proxy
(tests.fakegcp.gcloud sets that up); the region is then read from the Host header."""

from __future__ import annotations

import re

from ..core.api import Request, handles, project_number
from ..core.errors import GcpError

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


def _container(c: dict) -> dict:
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
    if c.get("volumeMounts"):
        out["volumeMounts"] = c["volumeMounts"]
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
    if sql:
        tpl_annotations["run.googleapis.com/cloudsql-instances"] = ",".join(sql)
    containers = tpl.get("containers") or []
    if any(c.get("resources", {}).get("startupCpuBoost") for c in containers):
        tpl_annotations["run.googleapis.com/startup-cpu-boost"] = "true"
    if containers and containers[0].get("resources", {}).get("cpuIdle") is False:
        tpl_annotations["run.googleapis.com/cpu-throttling"] = "false"
    tpl_meta = {"annotations": tpl_annotations}
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
                "containers": [_container(c) for c in containers],
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
                return knative_service(svc)
        raise GcpError(404, f"Resource '{sid}' of kind 'SERVICE' in region "
                       f"'{_region(req)}' in project '{namespace}' does not exist.", "NOT_FOUND")

    @handles("run.namespaces.services.list", versions=("v1",))
    def v1_list_services(self, req: Request) -> dict:
        namespace = req.get("parent").split("/")[1]
        return {"apiVersion": "serving.knative.dev/v1", "kind": "ServiceList", "metadata": {},
                "items": [knative_service(s) for s in self._v1_services(namespace, _region(req))]}
