"""The fake keeps Google's timing: operations take their real duration on the fake's clock, an API
just enabled answers SERVICE_DISABLED for minutes, a new service account is unknown for a minute
or more to every API that accepts one, and user credentials without a quota project bill gcloud's
own project. All on by default."""

from __future__ import annotations

import json

import pytest
from googleapiclient.errors import HttpError

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401

P = "proj-timing"
R = "europe-west1"
EMAIL = f"fresh-account@{P}.iam.gserviceaccount.com"


def error_of(err: HttpError) -> dict:
    return json.loads(err.content)["error"]


@pytest.fixture
def new_account(fake_gcp, gcp_client):
    gcp_client("iam", "v1").projects().serviceAccounts().create(
        name=f"projects/{P}", body={"accountId": "fresh-account"}).execute()
    return EMAIL


def _refused_then_accepted(fake_gcp, call) -> None:
    with pytest.raises(HttpError) as info:
        call()
    assert info.value.status_code == 400
    assert f"Service account {EMAIL} does not exist" in error_of(info.value)["message"]
    fake_gcp.advance(fake_gcp.account_propagation_seconds)
    call()


def test_a_new_account_is_unknown_to_iam_policies_for_a_while(fake_gcp, gcp_client, new_account):
    assert fake_gcp.account_propagation_seconds >= 60, "Google: '60 seconds or more'"
    crm = gcp_client("cloudresourcemanager", "v1").projects()
    binding = {"role": "roles/cloudsql.client", "members": [f"serviceAccount:{EMAIL}"]}

    def grant():
        policy = crm.getIamPolicy(resource=P, body={}).execute()
        crm.setIamPolicy(resource=P, body={"policy": {**policy, "bindings": [*policy.get("bindings", []), binding]}}
                         ).execute()

    _refused_then_accepted(fake_gcp, grant)
    assert binding in crm.getIamPolicy(resource=P, body={}).execute()["bindings"]


def test_a_new_account_is_unknown_to_cloud_run(fake_gcp, gcp_client, new_account):
    services = gcp_client("run", "v2").projects().locations().services()
    body = {"template": {"serviceAccount": EMAIL, "containers": [{"image": "img"}]}}
    _refused_then_accepted(fake_gcp, lambda: services.create(
        parent=f"projects/{P}/locations/{R}", serviceId="svc", body=body).execute())


def test_a_new_account_is_unknown_to_cloud_build(fake_gcp, gcp_client, new_account):
    builds = gcp_client("cloudbuild", "v1").projects().builds()
    body = {"steps": [{"name": "gcr.io/cloud-builders/docker", "args": ["version"]}],
            "serviceAccount": f"projects/{P}/serviceAccounts/{EMAIL}", "options": {"logging": "CLOUD_LOGGING_ONLY"}}
    _refused_then_accepted(fake_gcp, lambda: builds.create(projectId=P, body=body).execute())


def test_a_new_account_is_unknown_to_cloud_scheduler(fake_gcp, gcp_client, new_account):
    jobs = gcp_client("cloudscheduler", "v1").projects().locations().jobs()
    parent = f"projects/{P}/locations/{R}"
    body = {"name": f"{parent}/jobs/pause", "schedule": "0 20 * * 5",
            "httpTarget": {"uri": "https://sqladmin.googleapis.com/x",
                           "oauthToken": {"serviceAccountEmail": EMAIL}}}
    _refused_then_accepted(fake_gcp, lambda: jobs.create(parent=parent, body=body).execute())


def test_operations_take_their_real_duration_on_the_fakes_clock(fake_gcp, gcp_client):
    builds = gcp_client("cloudbuild", "v1").projects().builds()
    op = builds.create(projectId=P, body={"steps": [{"name": "gcr.io/cloud-builders/docker", "args": ["version"]}]}
                       ).execute()
    build_id = op["metadata"]["build"]["id"]
    assert builds.get(projectId=P, id=build_id).execute()["status"] == "WORKING"
    fake_gcp.advance(60)
    assert builds.get(projectId=P, id=build_id).execute()["status"] == "WORKING", "builds take minutes"
    fake_gcp.advance(600)
    assert builds.get(projectId=P, id=build_id).execute()["status"] == "SUCCESS"


def test_builds_are_found_by_tag(fake_gcp, gcp_client):
    fake_gcp.strict(False)  # durations are not the point here
    builds = gcp_client("cloudbuild", "v1").projects().builds()
    for tag in ("first", "second"):
        builds.create(projectId=P, body={"steps": [{"name": "x"}], "tags": [tag]}).execute()
    found = builds.list(projectId=P, filter='tags="second"').execute()["builds"]
    assert [b["tags"] for b in found] == [["second"]]


def test_user_credentials_without_quota_project_bill_gclouds_project(fake_gcp, gcp_client):
    fake_gcp.user_credentials_without_quota_project()
    su = gcp_client("serviceusage", "v1")
    with pytest.raises(HttpError) as info:
        su.services().get(name=f"projects/{P}/services/run.googleapis.com").execute()
    detail = error_of(info.value)["details"][0]
    assert detail["reason"] == "SERVICE_DISABLED"
    assert detail["metadata"]["consumer"] == "projects/764086051850", "gcloud's own project, not ours"
    assert detail["metadata"]["service"] == "serviceusage.googleapis.com"
    # Resource-billed APIs are unaffected; a request naming a quota project is billed to it.
    assert gcp_client("cloudresourcemanager", "v1").projects().get(projectId=P).execute()["projectId"] == P
    req = su.services().get(name=f"projects/{P}/services/run.googleapis.com")
    req.headers["x-goog-user-project"] = P
    assert req.execute()["state"] == "ENABLED"
