"""Cloud Build builds the image as our own least-privilege account, against the fake of Google's
APIs, which refuses what Google refuses: an account that does not exist (actAs), a user-specified
account without a logging option, and a build whose account cannot read the source or push."""

from __future__ import annotations

import json

import pytest

from mlflow_gcp.errors import OperationFailed, PermissionDenied
from mlflow_gcp.gcp import cloudbuild
from mlflow_gcp.gcp.errors import InvalidRequest
from mlflow_gcp.ops import destroy as destroy_ops
from mlflow_gcp.plan import desired

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server  # noqa: F401
from tests.integration.test_deploy_up import PROJECT, make_cfg, make_ctx, plan, up

BUILDER = f"mlflow-builder@{PROJECT}.iam.gserviceaccount.com"
REPO = f"projects/{PROJECT}/locations/europe-west9/repositories/mlflow"


def _roles_of(policy: dict, email: str) -> list[str]:
    return sorted(b["role"] for b in policy.get("bindings", []) if f"serviceAccount:{email}" in b["members"])


def _policies(fake) -> tuple[dict, dict, dict]:
    cfg = make_cfg()
    return (fake.modules["cloudresourcemanager"].iam.policies.get(PROJECT, {}),
            fake.modules["storage"].iam.policies.get(cfg.bucket_name, {}),
            fake.modules["artifactregistry"].iam.policies.get(REPO, {}))


def test_a_fresh_up_builds_as_the_builder_account_with_its_least_roles(fake_gcp):
    cfg = make_cfg()
    assert cfg.builder_service_account_email == BUILDER
    up(cfg)
    assert BUILDER in fake_gcp.state("iam")
    project, bucket, repo = _policies(fake_gcp)
    assert _roles_of(project, BUILDER) == ["roles/logging.logWriter"]
    assert _roles_of(bucket, BUILDER) == ["roles/storage.objectViewer"]
    assert _roles_of(repo, BUILDER) == ["roles/artifactregistry.writer"]
    # The running server gets none of them.
    server = cfg.server_service_account_email
    assert not {"roles/logging.logWriter", "roles/artifactregistry.writer"} & set(_roles_of(project, server))
    assert _roles_of(repo, server) == []

    [build] = fake_gcp.state("cloudbuild").values()
    assert build["status"] == "SUCCESS"
    assert build["serviceAccount"] == f"projects/{PROJECT}/serviceAccounts/{BUILDER}"
    assert build["options"]["logging"] == "CLOUD_LOGGING_ONLY"


def test_a_second_up_changes_nothing(fake_gcp):
    up(make_cfg())
    fake_gcp.clear_log()
    assert plan(make_cfg()).empty
    up(make_cfg())
    assert fake_gcp.mutating_requests() == []


def test_a_given_image_needs_no_builder(fake_gcp):
    cfg = make_cfg(service__image="us-docker.pkg.dev/acme-ml-prod/images/mlflow-gcp@sha256:" + "a" * 64)
    kinds = {(a.kind, a.name): a.detail for a in plan(cfg).actions}
    assert kinds[("service account", BUILDER)] == "not needed: service.image is set"
    up(cfg)
    assert BUILDER not in fake_gcp.state("iam")
    assert BUILDER not in json.dumps(fake_gcp.modules["cloudresourcemanager"].iam.policies)


def test_the_fake_refuses_a_user_specified_account_without_a_logging_option(fake_gcp):
    up(make_cfg())
    body = desired.build(make_cfg(), make_cfg().bucket_name, "o.tar.gz")
    del body["options"]
    with pytest.raises(InvalidRequest) as err:
        cloudbuild.build(make_ctx(make_cfg()).clients, body)
    assert "if 'build.service_account' is specified, the build must either" in str(err.value)


def test_the_fake_refuses_an_account_that_does_not_exist(fake_gcp):
    body = desired.build(make_cfg(service__build_service_account="nobody-builds"), "b", "o.tar.gz")
    with pytest.raises(PermissionDenied) as err:
        cloudbuild.build(make_ctx(make_cfg()).clients, body)
    assert "iam.serviceaccounts.actAs" in str(err.value)


def test_a_builder_that_cannot_push_fails_the_build_and_up_restores_its_role(fake_gcp, monkeypatch):
    up(make_cfg())
    # Someone removed the builder's role on the repository, and a new image is due.
    fake_gcp.modules["artifactregistry"].iam.policies.pop(REPO)
    fake_gcp.modules["artifactregistry"].images.clear()
    with monkeypatch.context() as patched, pytest.raises(OperationFailed) as err:
        patched.setattr(desired, "repository_iam", lambda cfg: [])
        up(make_cfg())
    assert "artifactregistry.repositories.uploadArtifacts" in str(err.value)
    changes = [(a.kind, a.name) for a in plan(make_cfg()).changes]
    assert changes[0] == ("IAM binding", "repository mlflow")
    up(make_cfg())
    assert list(fake_gcp.state("cloudbuild").values())[-1]["status"] == "SUCCESS"


def test_destroy_removes_the_builder_and_its_project_role(fake_gcp):
    up(make_cfg())
    result = destroy_ops.destroy(make_ctx(make_cfg()), backup=False)
    assert f"service account {BUILDER}" in result.deleted
    assert BUILDER not in fake_gcp.state("iam")
    assert BUILDER not in json.dumps(fake_gcp.modules["cloudresourcemanager"].iam.policies)


def test_destroy_keeping_the_bucket_leaves_the_builder_no_access_to_it(fake_gcp):
    cfg = make_cfg()
    up(cfg)
    destroy_ops.destroy(make_ctx(cfg), backup=False, keep_bucket=True)
    assert cfg.bucket_name in fake_gcp.state("storage")
    assert BUILDER not in json.dumps(fake_gcp.modules["storage"].iam.policies)
