"""The image repository's cleanup policy, against the fake of Google's APIs: `up` sets it on a new
repository and on one an earlier version created without it, patches only that when
service.images_kept changes, leaves other policies alone, and a second `up` changes nothing."""

from __future__ import annotations

import pytest

from mlflow_gcp.plan import desired

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401
from tests.integration.test_deploy_up import PROJECT, make_cfg, plan, up

REPO = f"projects/{PROJECT}/locations/europe-west9/repositories/mlflow"
DELETE_OLD = {
    "id": "mlflow-gcp-delete-old", "action": "DELETE",
    "condition": {"tagState": "ANY", "olderThan": "604800s", "packageNamePrefixes": ["mlflow-gcp"]},
}


def _keep(n: int) -> dict:
    return {"id": "mlflow-gcp-keep-recent", "action": "KEEP",
            "mostRecentVersions": {"packageNamePrefixes": ["mlflow-gcp"], "keepCount": n}}


def _repo(fake) -> dict:
    return fake.state("artifactregistry")[REPO]


def test_a_fresh_up_creates_the_repository_with_the_policy(fake_gcp):
    up(make_cfg())
    repo = _repo(fake_gcp)
    assert repo["cleanupPolicies"] == {"mlflow-gcp-delete-old": DELETE_OLD, "mlflow-gcp-keep-recent": _keep(5)}
    assert repo["cleanupPolicyDryRun"] is False
    fake_gcp.clear_log()
    assert plan(make_cfg()).empty
    up(make_cfg())
    assert fake_gcp.mutating_requests() == []


def test_changing_images_kept_patches_only_the_repository(fake_gcp):
    up(make_cfg())
    changed = make_cfg(service__images_kept=3)
    p = plan(changed)
    assert [(a.kind, [str(c) for c in a.changes]) for a in p.changes] == [
        ("Artifact Registry repository",
         ["cleanupPolicies.mlflow-gcp-keep-recent.mostRecentVersions.keepCount (service.images_kept): 5 -> 3"]),
    ]
    fake_gcp.clear_log()
    up(changed)
    writes = fake_gcp.mutating_requests()
    assert [r.method_id for r in writes] == ["artifactregistry.projects.locations.repositories.patch"]
    assert writes[0].query.get("updateMask") in ("cleanupPolicies,cleanupPolicyDryRun",
                                                 ["cleanupPolicies,cleanupPolicyDryRun"])
    assert _repo(fake_gcp)["cleanupPolicies"]["mlflow-gcp-keep-recent"] == _keep(3)
    fake_gcp.clear_log()
    assert plan(changed).empty and fake_gcp.mutating_requests() == []


def test_a_repository_created_without_a_policy_gets_it_and_keeps_its_own(fake_gcp, gcp_client):
    theirs = {"id": "keep-release", "action": "KEEP", "condition": {"tagState": "TAGGED", "tagPrefixes": ["release"]}}
    ar = gcp_client("artifactregistry", "v1").projects().locations().repositories()
    ar.create(parent=f"projects/{PROJECT}/locations/europe-west9", repositoryId="mlflow",
              body={"format": "DOCKER", "cleanupPolicies": {"keep-release": theirs}}).execute()
    p = plan(make_cfg())
    action = next(a for a in p.actions if a.key == "repository")
    assert action.verb == "update"
    assert any(c.path == "cleanupPolicies.mlflow-gcp-keep-recent.mostRecentVersions.keepCount" for c in action.changes)
    up(make_cfg())
    assert _repo(fake_gcp)["cleanupPolicies"] == {
        "keep-release": theirs, "mlflow-gcp-delete-old": DELETE_OLD, "mlflow-gcp-keep-recent": _keep(5)}
    assert _repo(fake_gcp)["cleanupPolicyDryRun"] is False
    fake_gcp.clear_log()
    assert plan(make_cfg()).empty and fake_gcp.mutating_requests() == []


def test_a_dry_run_switched_on_out_of_band_is_set_back(fake_gcp, gcp_client):
    up(make_cfg())
    ar = gcp_client("artifactregistry", "v1").projects().locations().repositories()
    ar.patch(name=REPO, updateMask="cleanupPolicyDryRun", body={"cleanupPolicyDryRun": True}).execute()
    assert [str(c) for c in next(a for a in plan(make_cfg()).actions if a.key == "repository").changes] == [
        "cleanupPolicyDryRun: true -> false"]
    up(make_cfg())
    assert _repo(fake_gcp)["cleanupPolicyDryRun"] is False


@pytest.mark.parametrize("policy, message", [
    ({"id": "x", "action": "DELETE", "mostRecentVersions": {"keepCount": 2}}, "Keep action"),
    ({"id": "x", "action": "KEEP", "condition": {"tagState": "ANY"}, "mostRecentVersions": {"keepCount": 2}},
     "not both"),
    ({"id": "x", "action": "KEEP"}, "required"),
    ({"id": "x", "condition": {"tagState": "ANY"}}, "DELETE or KEEP"),
    ("eleven", "at most 10"),
])
def test_the_fake_rejects_a_malformed_policy_as_the_reference_describes(fake_gcp, gcp_client, policy, message):
    up(make_cfg())
    ar = gcp_client("artifactregistry", "v1").projects().locations().repositories()
    from googleapiclient.errors import HttpError

    with pytest.raises(HttpError) as err:
        many = {f"k{i}": {"id": f"k{i}", "action": "KEEP", "condition": {"tagState": "TAGGED"}} for i in range(11)}
        body = many if policy == "eleven" else {"x": policy}
        ar.patch(name=REPO, updateMask="cleanupPolicies", body={"cleanupPolicies": body}).execute()
    assert err.value.resp.status == 400 and message in str(err.value)
    assert set(_repo(fake_gcp)["cleanupPolicies"]) == {"mlflow-gcp-delete-old", "mlflow-gcp-keep-recent"}


def test_the_policies_name_the_package_up_builds():
    assert make_cfg().image_uri.rsplit(":", 1)[0].rsplit("/", 1)[1] == desired.IMAGE_PACKAGE
