"""Cloud Run v2 in the fake: services with operations, revisions and IAM; jobs and executions;
the v1 (Knative) view that gcloud reads and deploys through."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from googleapiclient.errors import HttpError

from tests.fakegcp.core.api import project_number
from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401

P, R = "proj-run", "europe-west1"
PARENT = f"projects/{P}/locations/{R}"
NAME = f"{PARENT}/services/mlflow"
SA = f"mlflow-server@{P}.iam.gserviceaccount.com"


@pytest.fixture(autouse=True)
def _polls_only(fake_gcp):
    # These test each API's shapes and rules; Google's timing (durations, propagation) has its
    # own tests (test_fakegcp_core.py, test_fakegcp_timing.py) and is on everywhere else.
    fake_gcp.strict(False)


def service_body(image="europe-west1-docker.pkg.dev/p/r/mlflow@sha256:1", max_instances=2, env=None):
    return {
        "ingress": "INGRESS_TRAFFIC_ALL",
        "template": {
            "serviceAccount": SA,
            "scaling": {"minInstanceCount": 0, "maxInstanceCount": max_instances},
            "volumes": [{"name": "cloudsql", "cloudSqlInstance": {"instances": [f"{P}:{R}:mlflow-db"]}}],
            "containers": [{
                "image": image, "ports": [{"containerPort": 8080}],
                "env": env if env is not None else [{"name": "A", "value": "1"}],
                "volumeMounts": [{"name": "cloudsql", "mountPath": "/cloudsql"}],
                "startupProbe": {"httpGet": {"path": "/health"}},
            }],
        },
    }


@pytest.fixture
def run(gcp_client, fake_gcp):
    iam = gcp_client("iam", "v1")
    iam.projects().serviceAccounts().create(name=f"projects/{P}", body={"accountId": "mlflow-server"}).execute()
    return gcp_client("run", "v2")


def wait(run, op):
    while not op["done"]:
        op = run.projects().locations().operations().get(name=op["name"]).execute()
    return op


def services(run):
    return run.projects().locations().services()


def test_create_waits_on_operation_then_ready(run):
    op = services(run).create(parent=PARENT, serviceId="mlflow", body=service_body()).execute()
    assert not op["done"] and op["name"].startswith(f"{PARENT}/operations/")
    assert services(run).get(name=NAME).execute()["terminalCondition"]["state"] == "CONDITION_RECONCILING"
    svc = wait(run, op)["response"]
    assert svc["terminalCondition"]["state"] == "CONDITION_SUCCEEDED"
    assert svc["uri"] == f"https://mlflow-{project_number(P)}.{R}.run.app" and svc["uri"] in svc["urls"]
    assert svc["latestReadyRevision"] == svc["latestCreatedRevision"]
    assert svc["latestReadyRevision"].startswith(f"{NAME}/revisions/mlflow-00001-")
    c = svc["template"]["containers"][0]
    assert c["resources"]["limits"] == {"cpu": "1000m", "memory": "512Mi"}  # API defaults
    assert c["ports"] == [{"containerPort": 8080, "name": "http1"}]
    assert svc["template"]["scaling"]["maxInstanceCount"] == 2
    with pytest.raises(HttpError) as info:
        services(run).create(parent=PARENT, serviceId="mlflow", body=service_body()).execute()
    assert info.value.status_code == 409


def test_patch_replaces_and_only_template_changes_make_revisions(run):
    wait(run, services(run).create(parent=PARENT, serviceId="mlflow", body=service_body()).execute())
    body = service_body()
    body["scaling"] = {"minInstanceCount": 0}
    svc = wait(run, services(run).patch(name=NAME, body=body).execute())["response"]
    assert svc["generation"] == "2" and svc["latestReadyRevision"].split("/")[-1].startswith("mlflow-00001-")
    svc = wait(run, services(run).patch(name=NAME, body=service_body(max_instances=5)).execute())["response"]
    assert svc["latestReadyRevision"].split("/")[-1].startswith("mlflow-00003-")
    assert "scaling" not in svc  # v2 patch without updateMask replaced the whole service
    revs = run.projects().locations().services().revisions().list(parent=NAME).execute()["revisions"]
    assert [r["name"].split("/")[-1][:12] for r in revs] == ["mlflow-00003", "mlflow-00001"]


def test_validation_of_containers_env_and_accounts(run):
    bad_env = service_body(env=[{"name": "PORT", "value": "1"}])
    with pytest.raises(HttpError) as info:
        services(run).create(parent=PARENT, serviceId="mlflow", body=bad_env).execute()
    assert info.value.status_code == 400
    no_account = service_body()
    no_account["template"]["serviceAccount"] = f"missing-sa@{P}.iam.gserviceaccount.com"
    with pytest.raises(HttpError) as info:
        services(run).create(parent=PARENT, serviceId="mlflow", body=no_account).execute()
    assert info.value.status_code == 403 and b"actAs" in info.value.content
    unmounted = service_body()
    unmounted["template"]["volumes"] = []
    with pytest.raises(HttpError):
        services(run).create(parent=PARENT, serviceId="mlflow", body=unmounted).execute()


@pytest.mark.parametrize("cpu, memory, environment, refused", [
    ("1", "512Mi", "EXECUTION_ENVIRONMENT_GEN2", None),
    ("1", "256Mi", "EXECUTION_ENVIRONMENT_GEN2", "below the minimum of 512Mi"),
    ("1", "256Mi", "", None),  # unspecified: Cloud Run may pick the first generation (128Mi)
    ("1", "100Mi", "", "below the minimum of 128Mi"),
    ("1", "4Gi", "", None),
    ("1", "5Gi", "", "requires at least 2 CPUs"),
    ("2", "16Gi", "", "requires at least 4 CPUs"),
    ("4", "1Gi", "", "4 CPUs require at least 2Gi"),
    ("8", "2Gi", "", "8 CPUs require at least 4Gi"),
    ("1500m", "1Gi", "", "whole number"),
    ("500m", "1Gi", "", None),
    ("500m", "2Gi", "", "at least 1 CPU"),
    ("250m", "1Gi", "", "at least 0.5 CPU"),
    ("500m", "512Mi", "EXECUTION_ENVIRONMENT_GEN2", "first generation"),
    ("1", "33Gi", "", "maximum of 32Gi"),
])
def test_cpu_and_memory_limits_follow_cloud_runs_rules(run, cpu, memory, environment, refused):
    body = service_body()
    body["template"]["containers"][0]["resources"] = {"limits": {"cpu": cpu, "memory": memory}}
    if environment:
        body["template"]["executionEnvironment"] = environment
    create = services(run).create(parent=PARENT, serviceId="mlflow", body=body)
    if refused is None:
        assert wait(run, create.execute())["done"]
        return
    with pytest.raises(HttpError) as info:
        create.execute()
    assert info.value.status_code == 400 and refused in info.value.content.decode()


def test_secrets_must_exist_and_be_readable_by_the_runtime_account(run, gcp_client):
    env = [{"name": "DB_PASSWORD", "valueSource": {"secretKeyRef": {"secret": "pw", "version": "latest"}}}]
    op = wait(run, services(run).create(parent=PARENT, serviceId="mlflow", body=service_body(env=env)).execute())
    assert "secrets/pw/versions/latest was not found" in op["error"]["message"]
    assert services(run).get(name=NAME).execute()["terminalCondition"]["state"] == "CONDITION_FAILED"

    secrets = gcp_client("secretmanager", "v1").projects().secrets()
    secret = secrets.create(parent=f"projects/{P}", secretId="pw", body={"replication": {"automatic": {}}}).execute()
    op = wait(run, services(run).patch(name=NAME, body=service_body(env=env), forceNewRevision=True).execute())
    assert "Secret Manager Secret Accessor" in op["error"]["message"]

    secrets.setIamPolicy(resource=secret["name"], body={"policy": {"bindings": [
        {"role": "roles/secretmanager.secretAccessor", "members": [f"serviceAccount:{SA}"]}]}}).execute()
    op = wait(run, services(run).patch(name=NAME, body=service_body(env=env), forceNewRevision=True).execute())
    assert "error" not in op and op["response"]["terminalCondition"]["state"] == "CONDITION_SUCCEEDED"


def test_service_iam_and_delete(fake_gcp, run):
    wait(run, services(run).create(parent=PARENT, serviceId="mlflow", body=service_body()).execute())
    policy = services(run).getIamPolicy(resource=NAME).execute()
    policy["bindings"] = [{"role": "roles/run.invoker", "members": ["user:ann@example.com"]}]
    new = services(run).setIamPolicy(resource=NAME, body={"policy": policy}).execute()
    assert new["bindings"] == policy["bindings"]
    with pytest.raises(HttpError) as info:
        services(run).setIamPolicy(resource=NAME, body={"policy": policy}).execute()
    assert info.value.status_code == 409
    wait(run, services(run).delete(name=NAME).execute())
    assert fake_gcp.state("run") == {}
    with pytest.raises(HttpError) as info:
        services(run).get(name=NAME).execute()
    assert info.value.status_code == 404


def test_job_runs_to_execution_success_and_injected_failure(fake_gcp, run):
    jobs = run.projects().locations().jobs()
    body = {"template": {"template": {"serviceAccount": SA, "maxRetries": 0,
                                      "containers": [{"image": "img", "args": ["db", "upgrade"]}]}}}
    wait(run, jobs.create(parent=PARENT, jobId="mlflow-migrate", body=body).execute())
    job_name = f"{PARENT}/jobs/mlflow-migrate"
    op = jobs.run(name=job_name, body={}).execute()
    assert op["metadata"]["name"].startswith(f"{job_name}/executions/mlflow-migrate-")
    execution = wait(run, op)["response"]
    assert execution["succeededCount"] == 1
    assert execution["conditions"][0] == {**execution["conditions"][0], "type": "Completed",
                                          "state": "CONDITION_SUCCEEDED"}
    assert jobs.get(name=job_name).execute()["latestCreatedExecution"]["completionStatus"] == "EXECUTION_SUCCEEDED"

    fake_gcp.fail_next_operation("run", message="Task mlflow-migrate-xyz failed: exit code 1")
    op = wait(run, jobs.run(name=job_name, body={}).execute())
    assert "exit code 1" in op["error"]["message"]
    failed = jobs.executions().get(name=op["metadata"]["name"]).execute()
    assert failed["failedCount"] == 1 and failed["conditions"][0]["state"] == "CONDITION_FAILED"
    assert len(jobs.executions().list(parent=job_name).execute()["executions"]) == 2

    body["template"]["template"]["containers"][0]["image"] = "img2"
    job = wait(run, jobs.patch(name=job_name, body=body).execute())["response"]
    assert job["template"]["template"]["containers"][0]["image"] == "img2" and job["generation"] == "2"
    wait(run, jobs.delete(name=job_name).execute())
    assert fake_gcp.api("run").jobs == {}


def test_v1_knative_view_for_gcloud(run, gcp_client):
    wait(run, services(run).create(parent=PARENT, serviceId="mlflow", body=service_body()).execute())
    v1 = gcp_client("run", "v1")
    svc = v1.namespaces().services().get(name=f"namespaces/{P}/services/mlflow").execute()
    assert svc["kind"] == "Service" and svc["metadata"]["namespace"] == project_number(P)
    assert svc["status"]["latestReadyRevisionName"].startswith("mlflow-00001-")
    assert svc["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@sha256:1")
    listed = v1.namespaces().services().list(parent=f"namespaces/{project_number(P)}").execute()
    assert [s["metadata"]["name"] for s in listed["items"]] == ["mlflow"]
    assert "run.googleapis.com/invoker-iam-disabled" not in svc["metadata"]["annotations"]
    wait(run, services(run).patch(name=NAME, body={**service_body(), "invokerIamDisabled": True}).execute())
    svc = v1.namespaces().services().get(name=f"namespaces/{P}/services/mlflow").execute()
    assert svc["metadata"]["annotations"]["run.googleapis.com/invoker-iam-disabled"] == "true"


def test_failed_rollout_keeps_the_ready_revision_and_traffic_can_go_back(fake_gcp, run):
    wait(run, services(run).create(parent=PARENT, serviceId="mlflow", body=service_body()).execute())
    good = services(run).get(name=NAME).execute()["latestReadyRevision"]
    fake_gcp.fail_next_operation("run", message="Container failed to start", target_regex=r"services/mlflow ")
    op = wait(run, services(run).patch(name=NAME, body=service_body(image="bad")).execute())
    assert "failed to start" in op["error"]["message"]
    svc = services(run).get(name=NAME).execute()
    assert svc["latestReadyRevision"] == good != svc["latestCreatedRevision"]
    assert svc["terminalCondition"]["state"] == "CONDITION_FAILED"
    back = service_body(image="bad")
    back["traffic"] = [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": good.rsplit("/", 1)[-1], "percent": 100}]
    svc = wait(run, services(run).patch(name=NAME, body=back).execute())["response"]
    assert svc["trafficStatuses"] == [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION",
                                       "revision": good.rsplit("/", 1)[-1], "percent": 100}]
    back["traffic"][0]["revision"] = "mlflow-09999-xyz"
    with pytest.raises(HttpError) as info:
        services(run).patch(name=NAME, body=back).execute()
    assert info.value.status_code == 400


def v1_call(fake, method, path, body=None, region=R):
    """A Cloud Run v1 write as gcloud sends it: to the regional endpoint, which the fake (as
    gcloud's proxy) tells from the Host header."""
    root = urlsplit(fake.url)
    conn = http.client.HTTPConnection(root.hostname, root.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if region:
        headers["Host"] = f"{region}-{root.hostname}:{root.port}"
    conn.request(method, f"/run/apis/serving.knative.dev/v1/{path}", json.dumps(body) if body else None, headers)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read() or b"null")


def knative_body(image="europe-west1-docker.pkg.dev/p/r/mlflow:latest", env=None):
    """What `gcloud run deploy --add-cloudsql-instances --max-instances 10 --set-env-vars` posts."""
    return {
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "mlflow", "namespace": P, "labels": {},
                     "annotations": {"run.googleapis.com/client-name": "gcloud"}},
        "spec": {"template": {
            "metadata": {"annotations": {"autoscaling.knative.dev/maxScale": "10",
                                         "run.googleapis.com/cloudsql-instances": f"{P}:{R}:mlflow-db",
                                         "run.googleapis.com/startup-cpu-boost": "True"},
                         "labels": {"client.knative.dev/nonce": "abcde"}},
            "spec": {"serviceAccountName": SA, "containers": [{
                "name": "", "image": image, "ports": [{"containerPort": 8080}],
                "env": env if env is not None else [{"name": "DB_URI", "value": "postgresql://u@/mlflow"}]}]}}},
        "status": {"address": {}},
    }


def ready(svc):
    return {c["type"]: c["status"] for c in svc["status"]["conditions"]}.get("Ready")


def test_v1_create_and_replace_are_the_v2_service(fake_gcp, run, gcp_client):
    code, created = v1_call(fake_gcp, "POST", f"namespaces/{P}/services", knative_body())
    assert code == 200 and created["metadata"]["name"] == "mlflow" and ready(created) == "Unknown"
    v2 = services(run).get(name=NAME).execute()
    assert v2["reconciling"] is True and v2["client"] == "gcloud"
    tpl = v2["template"]
    assert tpl["serviceAccount"] == SA and tpl["scaling"]["maxInstanceCount"] == 10
    assert tpl["volumes"] == [{"name": "cloudsql", "cloudSqlInstance": {"instances": [f"{P}:{R}:mlflow-db"]}}]
    container = tpl["containers"][0]
    assert container["volumeMounts"] == [{"name": "cloudsql", "mountPath": "/cloudsql"}]
    assert container["env"] == [{"name": "DB_URI", "value": "postgresql://u@/mlflow"}]
    assert container["resources"]["startupCpuBoost"] is True
    # v1 has no operation: gcloud polls the service until Ready is True.
    svc = created
    for _ in range(20):
        code, svc = v1_call(fake_gcp, "GET", f"namespaces/{P}/services/mlflow")
        if ready(svc) == "True":
            break
    assert ready(svc) == "True" and svc["status"]["observedGeneration"] == 1
    assert svc["status"]["latestReadyRevisionName"] == services(run).get(name=NAME).execute()[
        "latestReadyRevision"].rsplit("/", 1)[-1]

    # replaceService sends back what it read, changed: a full replace, a new revision.
    svc["spec"]["template"]["spec"]["containers"][0]["image"] = "europe-west1-docker.pkg.dev/p/r/mlflow:2"
    code, replaced = v1_call(fake_gcp, "PUT", f"namespaces/{P}/services/mlflow", svc)
    assert code == 200 and replaced["metadata"]["generation"] == 2, replaced
    v2 = services(run).get(name=NAME).execute()
    assert v2["template"]["containers"][0]["image"].endswith("mlflow:2")
    assert v2["template"]["containers"][0]["volumeMounts"] == [{"name": "cloudsql", "mountPath": "/cloudsql"}]
    code, stale = v1_call(fake_gcp, "PUT", f"namespaces/{P}/services/mlflow", svc)
    assert code == 409 and "resourceVersion" in stale["error"]["message"]

    # --allow-unauthenticated: v1 IAM on the same policy v2 serves.
    v1 = gcp_client("run", "v1").projects().locations().services()
    v1.setIamPolicy(resource=NAME, body={"policy": {"bindings": [
        {"role": "roles/run.invoker", "members": ["allUsers"]}]}}).execute()
    assert services(run).getIamPolicy(resource=NAME).execute()["bindings"] == [
        {"role": "roles/run.invoker", "members": ["allUsers"]}]


@pytest.mark.parametrize("change, field", [
    (lambda b: b["spec"]["template"]["spec"].update(containers=[]), "spec.template.spec.containers"),
    (lambda b: b.update(kind="Configuration"), "kind"),
    (lambda b: b["metadata"].update(namespace="other-project"), "metadata.namespace"),
    (lambda b: b["spec"]["template"]["spec"]["containers"][0].update(env=[{"name": "PORT", "value": "1"}]), "PORT"),
    (lambda b: b["spec"]["template"]["metadata"]["annotations"].update(
        {"autoscaling.knative.dev/maxScale": "many"}), "maxScale"),
])
def test_v1_create_refuses_an_invalid_body_and_stores_nothing(fake_gcp, run, change, field):
    body = knative_body()
    change(body)
    code, err = v1_call(fake_gcp, "POST", f"namespaces/{P}/services", body)
    assert code == 400 and field in err["error"]["message"], err
    assert fake_gcp.api("run").state == {}


def test_v1_writes_need_the_regional_endpoint(fake_gcp, run):
    code, err = v1_call(fake_gcp, "POST", f"namespaces/{P}/services", knative_body(), region=None)
    assert code == 400 and "regional endpoint" in err["error"]["message"]
    assert fake_gcp.api("run").state == {}


def test_v1_dry_run_checks_and_stores_nothing(fake_gcp, run):
    code, checked = v1_call(fake_gcp, "POST", f"namespaces/{P}/services?dryRun=all", knative_body())
    assert code == 200 and checked["metadata"]["name"] == "mlflow"
    assert fake_gcp.api("run").state == {}
    code, err = v1_call(fake_gcp, "POST", f"namespaces/{P}/services?dryRun=all",
                        knative_body(env=[{"name": "K_SERVICE", "value": "x"}]))
    assert code == 400 and "K_SERVICE" in err["error"]["message"]
