"""A client nobody here wrote, the real gcloud CLI, reads back what was created in the standalone
fake through googleapiclient: the fake speaks the real APIs' paths and shapes (gcloud uses
sqladmin v1beta4, its own storage client, and the v1 IAM / Resource Manager / Secret Manager
APIs)."""

from __future__ import annotations

import base64

import pytest

from tests.fakegcp.client import build_client
from tests.fakegcp.core.api import project_number
from tests.fakegcp.gcloud import gcloud_available, run_gcloud
from tests.fakegcp.standalone import StandaloneFake

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not gcloud_available(), reason="the gcloud CLI is not installed"),
]

P, R = "readback-proj", "europe-west1"
SA = f"mlflow-server@{P}.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def fake():
    with StandaloneFake(strict=False) as running:  # seeded by raw calls, each operation polled once
        url = running.url
        sql = build_client(url, "sqladmin", "v1")
        op = sql.instances().insert(project=P, body={
            "name": "mlflow-db", "databaseVersion": "POSTGRES_16", "region": R,
            "settings": {"tier": "db-f1-micro", "deletionProtectionEnabled": True,
                         "backupConfiguration": {"enabled": True, "startTime": "03:00",
                                                 "pointInTimeRecoveryEnabled": True},
                         "ipConfiguration": {"ipv4Enabled": True, "sslMode": "ENCRYPTED_ONLY"}}}).execute()
        sql.operations().get(project=P, operation=op["name"]).execute()
        sql.databases().insert(project=P, instance="mlflow-db", body={"name": "mlflow"}).execute()

        build_client(url, "storage", "v1").buckets().insert(project=P, body={
            "name": "readback-artifacts", "location": R,
            "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True},
                                 "publicAccessPrevention": "enforced"}}).execute()

        secrets = build_client(url, "secretmanager", "v1").projects().secrets()
        secrets.create(parent=f"projects/{P}", secretId="mlflow-db-password",
                       body={"replication": {"automatic": {}}, "labels": {"app": "mlflow"}}).execute()
        secrets.addVersion(parent=f"projects/{P}/secrets/mlflow-db-password",
                           body={"payload": {"data": base64.b64encode(b"never-shown").decode()}}).execute()

        build_client(url, "iam", "v1").projects().serviceAccounts().create(
            name=f"projects/{P}", body={"accountId": "mlflow-server",
                                        "serviceAccount": {"displayName": "MLflow server"}}).execute()

        secrets.setIamPolicy(resource=f"projects/{P}/secrets/mlflow-db-password", body={"policy": {
            "bindings": [{"role": "roles/secretmanager.secretAccessor", "members": [f"serviceAccount:{SA}"]}]}}).execute()

        run = build_client(url, "run", "v2").projects().locations()
        op = run.services().create(parent=f"projects/{P}/locations/{R}", serviceId="mlflow", body={
            "template": {"serviceAccount": SA, "scaling": {"maxInstanceCount": 3},
                         "volumes": [{"name": "cloudsql", "cloudSqlInstance": {"instances": [f"{P}:{R}:mlflow-db"]}}],
                         "containers": [{"image": f"{R}-docker.pkg.dev/{P}/mlflow/server@sha256:{'a' * 64}",
                                         "env": [{"name": "DB_PASSWORD", "valueSource": {"secretKeyRef": {
                                             "secret": "mlflow-db-password", "version": "latest"}}}],
                                         "volumeMounts": [{"name": "cloudsql", "mountPath": "/cloudsql"}]}]}}).execute()
        run.operations().get(name=op["name"]).execute()

        crm = build_client(url, "cloudresourcemanager", "v1").projects()
        policy = crm.getIamPolicy(resource=P, body={}).execute()
        policy["bindings"].append({"role": "roles/cloudsql.client", "members": [f"serviceAccount:{SA}"]})
        crm.setIamPolicy(resource=P, body={"policy": policy}).execute()
        yield running


def test_sql_instance(fake):
    inst = run_gcloud(fake.url, "sql", "instances", "describe", "mlflow-db", project=P)
    assert inst["state"] == "RUNNABLE" and inst["databaseVersion"] == "POSTGRES_16"
    assert inst["connectionName"] == f"{P}:{R}:mlflow-db"
    backups = inst["settings"]["backupConfiguration"]
    assert backups["enabled"] and backups["startTime"] == "03:00" and backups["pointInTimeRecoveryEnabled"]
    assert inst["settings"]["deletionProtectionEnabled"] is True
    assert inst["settings"]["ipConfiguration"]["sslMode"] == "ENCRYPTED_ONLY"
    dbs = run_gcloud(fake.url, "sql", "databases", "list", "--instance=mlflow-db", project=P)
    assert "mlflow" in {d["name"] for d in dbs}


def test_bucket(fake):
    bucket = run_gcloud(fake.url, "storage", "buckets", "describe", "gs://readback-artifacts", project=P)
    assert bucket["name"] == "readback-artifacts" and bucket["location"] == "EUROPE-WEST1"
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    listing = run_gcloud(fake.url, "storage", "ls", project=P, parse_json=False)
    assert listing.split() == ["gs://readback-artifacts/"]


def test_secret(fake):
    secret = run_gcloud(fake.url, "secrets", "describe", "mlflow-db-password", project=P)
    assert secret["name"] == f"projects/{project_number(P)}/secrets/mlflow-db-password"
    assert secret["labels"] == {"app": "mlflow"} and "automatic" in secret["replication"]
    versions = run_gcloud(fake.url, "secrets", "versions", "list", "mlflow-db-password", project=P)
    assert [v["state"] for v in versions] == ["ENABLED"]


def test_service_accounts(fake):
    listed = run_gcloud(fake.url, "iam", "service-accounts", "list", project=P)
    assert [a["email"] for a in listed] == [SA]
    described = run_gcloud(fake.url, "iam", "service-accounts", "describe", SA, project=P)
    assert described["displayName"] == "MLflow server" and described["projectId"] == P


def test_project_iam_policy(fake):
    policy = run_gcloud(fake.url, "projects", "get-iam-policy", P, project=P)
    assert {"role": "roles/cloudsql.client", "members": [f"serviceAccount:{SA}"]} in policy["bindings"]
    assert policy["etag"]


def test_cloud_run_service(fake):
    svc = run_gcloud(fake.url, "run", "services", "describe", "mlflow", f"--region={R}", project=P)
    assert svc["status"]["url"] == f"https://mlflow-{project_number(P)}.{R}.run.app"
    assert {c["type"]: c["status"] for c in svc["status"]["conditions"]}["Ready"] == "True"
    spec = svc["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == SA
    assert spec["containers"][0]["env"] == [
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "mlflow-db-password", "key": "latest"}}}]
    annotations = svc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/maxScale"] == "3"
    assert annotations["run.googleapis.com/cloudsql-instances"] == f"{P}:{R}:mlflow-db"
    listed = run_gcloud(fake.url, "run", "services", "list", f"--region={R}", project=P)
    assert [s["metadata"]["name"] for s in listed] == ["mlflow"]
