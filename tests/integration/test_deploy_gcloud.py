"""After a real `mlflow-gcp up` process, the real gcloud CLI (a client nobody here wrote) reads
back what it created from the fake: the instance, the bucket, the secret, the service account,
the project IAM policy and the Cloud Run service."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server  # noqa: F401
from tests.fakegcp.gcloud import gcloud_available, run_gcloud

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not gcloud_available(), reason="the gcloud CLI is not installed"),
]

P = "readback-deploy"
SA = f"mlflow-server@{P}.iam.gserviceaccount.com"


def test_gcloud_reads_back_what_up_created(fake_gcp, tmp_path):
    env = {**os.environ, "MLFLOW_GCP_API_ROOT": fake_gcp.url}
    subprocess.run([sys.executable, "-m", "mlflow_gcp", "init", "--project", P, "--region", "europe-west1",
                    "--set", "access.members=group:ml-team@example.com"],
                   cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    up = subprocess.run([sys.executable, "-m", "mlflow_gcp", "up", "--yes"],
                        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    assert "export MLFLOW_TRACKING_AUTH=gcp" in up.stdout

    inst = run_gcloud(fake_gcp.url, "sql", "instances", "describe", "mlflow-db", project=P)
    assert inst["state"] == "RUNNABLE" and inst["databaseVersion"] == "POSTGRES_15"
    backups = inst["settings"]["backupConfiguration"]
    assert backups["enabled"] and backups["pointInTimeRecoveryEnabled"] and backups["startTime"] == "03:00"
    assert inst["settings"]["deletionProtectionEnabled"] is True
    assert inst["settings"]["ipConfiguration"]["sslMode"] == "ENCRYPTED_ONLY"
    users = run_gcloud(fake_gcp.url, "sql", "users", "list", "--instance=mlflow-db", project=P)
    assert "mlflow" in {u["name"] for u in users}

    bucket = run_gcloud(fake_gcp.url, "storage", "buckets", "describe", f"gs://{P}-mlflow-artifacts", project=P)
    assert bucket["location"] == "EUROPE-WEST1" and bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"

    versions = run_gcloud(fake_gcp.url, "secrets", "versions", "list", "mlflow-tracking-db-password", project=P)
    assert [v["state"] for v in versions] == ["ENABLED"]

    accounts = run_gcloud(fake_gcp.url, "iam", "service-accounts", "list", project=P)
    assert SA in [a["email"] for a in accounts]

    policy = run_gcloud(fake_gcp.url, "projects", "get-iam-policy", P, project=P)
    assert {"role": "roles/cloudsql.client", "members": [f"serviceAccount:{SA}"]} in policy["bindings"]
    assert not any(m.startswith(("allUsers", "allAuthenticatedUsers"))
                   for b in policy["bindings"] for m in b["members"])
