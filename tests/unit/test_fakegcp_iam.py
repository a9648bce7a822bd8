"""IAM service accounts and keys, project IAM (Resource Manager) and iamcredentials in the fake."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from googleapiclient.errors import HttpError

from tests.fakegcp.core.api import project_number
from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401

P = "proj-iam"
EMAIL = f"mlflow-server@{P}.iam.gserviceaccount.com"


@pytest.fixture(autouse=True)
def _polls_only(fake_gcp):
    # These test each API's shapes and rules; Google's timing (durations, propagation) has its
    # own tests (test_fakegcp_core.py, test_fakegcp_timing.py) and is on everywhere else.
    fake_gcp.strict(False)


@pytest.fixture
def sas(gcp_client):
    return gcp_client("iam", "v1").projects().serviceAccounts()


def test_service_account_lifecycle(fake_gcp, sas):
    made = sas.create(name=f"projects/{P}", body={"accountId": "mlflow-server",
                                                 "serviceAccount": {"displayName": "MLflow server"}}).execute()
    assert made["email"] == EMAIL and made["displayName"] == "MLflow server"
    assert sas.get(name=f"projects/-/serviceAccounts/{EMAIL}").execute()["uniqueId"] == made["uniqueId"]
    assert sas.get(name=f"projects/{P}/serviceAccounts/{made['uniqueId']}").execute()["email"] == EMAIL
    assert [a["email"] for a in sas.list(name=f"projects/{P}").execute()["accounts"]] == [EMAIL]
    with pytest.raises(HttpError) as info:
        sas.create(name=f"projects/{P}", body={"accountId": "mlflow-server"}).execute()
    assert info.value.status_code == 409
    with pytest.raises(HttpError) as info:
        sas.create(name=f"projects/{P}", body={"accountId": "ab"}).execute()
    assert info.value.status_code == 400
    patched = sas.patch(name=f"projects/{P}/serviceAccounts/{EMAIL}", body={
        "serviceAccount": {"description": "runs MLflow"}, "updateMask": "description"}).execute()
    assert patched["description"] == "runs MLflow" and patched["displayName"] == "MLflow server"
    sas.delete(name=f"projects/{P}/serviceAccounts/{EMAIL}").execute()
    assert fake_gcp.state("iam") == {}
    with pytest.raises(HttpError) as info:
        sas.get(name=f"projects/{P}/serviceAccounts/{EMAIL}").execute()
    assert info.value.status_code == 404


def test_keys_and_account_policy(sas):
    sas.create(name=f"projects/{P}", body={"accountId": "mlflow-server"}).execute()
    name = f"projects/{P}/serviceAccounts/{EMAIL}"
    key = sas.keys().create(name=name, body={}).execute()
    creds = json.loads(base64.b64decode(key["privateKeyData"]))
    assert creds["client_email"] == EMAIL and creds["type"] == "service_account"
    listed = sas.keys().list(name=name, keyTypes="USER_MANAGED").execute()["keys"]
    assert [k["name"] for k in listed] == [key["name"]] and "privateKeyData" not in listed[0]
    sas.keys().delete(name=key["name"]).execute()
    assert sas.keys().list(name=name).execute() == {}

    policy = sas.getIamPolicy(resource=name).execute()
    policy["bindings"] = [{"role": "roles/iam.serviceAccountTokenCreator", "members": [f"serviceAccount:{EMAIL}"]}]
    assert sas.setIamPolicy(resource=name, body={"policy": policy}).execute()["bindings"] == policy["bindings"]


def test_project_policy_etag_conflict(fake_gcp, gcp_client, sas):
    sas.create(name=f"projects/{P}", body={"accountId": "mlflow-server"}).execute()
    crm = gcp_client("cloudresourcemanager", "v1")
    project = crm.projects().get(projectId=P).execute()
    assert project["projectNumber"] == project_number(P) and project["lifecycleState"] == "ACTIVE"
    policy = crm.projects().getIamPolicy(resource=P, body={}).execute()
    assert policy["bindings"] == [{"role": "roles/owner", "members": ["user:owner@example.com"]}]
    policy["bindings"].append({"role": "roles/cloudsql.client", "members": [f"serviceAccount:{EMAIL}"]})
    new = crm.projects().setIamPolicy(resource=P, body={"policy": policy}).execute()
    assert new["etag"] != policy["etag"]
    with pytest.raises(HttpError) as info:
        crm.projects().setIamPolicy(resource=P, body={"policy": policy}).execute()
    assert info.value.status_code == 409 and json.loads(info.value.content)["error"]["status"] == "ABORTED"
    conditional = {**new, "bindings": new["bindings"] + [{"role": "roles/viewer", "members": ["user:b@example.com"],
                                                           "condition": {"expression": "true", "title": "t"}}]}
    with pytest.raises(HttpError) as info:  # conditions need policy version 3
        crm.projects().setIamPolicy(resource=P, body={"policy": conditional}).execute()
    assert info.value.status_code == 400
    v3 = gcp_client("cloudresourcemanager", "v3")
    assert v3.projects().get(name=f"projects/{P}").execute()["name"] == f"projects/{project_number(P)}"
    got = v3.projects().getIamPolicy(resource=f"projects/{P}", body={}).execute()
    assert {"role": "roles/cloudsql.client", "members": [f"serviceAccount:{EMAIL}"]} in got["bindings"]
    fake_gcp.api("cloudresourcemanager").missing.add("ghost")
    with pytest.raises(HttpError) as info:
        crm.projects().get(projectId="ghost").execute()
    assert info.value.status_code == 403


def test_iamcredentials_tokens_for_existing_accounts(fake_gcp, gcp_client, sas):
    creds = gcp_client("iamcredentials", "v1").projects().serviceAccounts()
    name = f"projects/-/serviceAccounts/{EMAIL}"
    with pytest.raises(HttpError) as info:
        creds.generateIdToken(name=name, body={"audience": "https://x.run.app"}).execute()
    assert info.value.status_code == 403
    sas.create(name=f"projects/{P}", body={"accountId": "mlflow-server"}).execute()
    token = creds.generateIdToken(name=name, body={"audience": "https://x.run.app"}).execute()["token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == "https://x.run.app" and claims["email"] == EMAIL
    signed = creds.signBlob(name=name, body={"payload": base64.b64encode(b"x").decode()}).execute()["signedBlob"]
    # A real RSA-SHA256 signature by the account's key: what a V4 signed URL's checker verifies.
    fake_gcp.api("iamcredentials").public_key(EMAIL).verify(
        base64.b64decode(signed), b"x", padding.PKCS1v15(), hashes.SHA256())


def test_deleted_account_bindings_are_renamed(gcp_client, sas):
    made = sas.create(name=f"projects/{P}", body={"accountId": "mlflow-server"}).execute()
    crm = gcp_client("cloudresourcemanager", "v1").projects()
    policy = crm.getIamPolicy(resource=P, body={}).execute()
    policy["bindings"].append({"role": "roles/cloudsql.client", "members": [f"serviceAccount:{EMAIL}"]})
    crm.setIamPolicy(resource=P, body={"policy": policy}).execute()
    sas.delete(name=f"projects/{P}/serviceAccounts/{EMAIL}").execute()
    bindings = crm.getIamPolicy(resource=P, body={}).execute()["bindings"]
    assert {"role": "roles/cloudsql.client",
            "members": [f"deleted:serviceAccount:{EMAIL}?uid={made['uniqueId']}"]} in bindings
