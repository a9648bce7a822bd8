"""`mlflow-gcp access`: invoker grants, bucket roles when direct, service accounts for jobs,
against the Google API fake (the resulting policies are read back from it)."""

from __future__ import annotations

import json
import stat

import pytest

from mlflow_gcp.cli.main import main
from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401

P, R = "proj-access", "europe-west9"
SERVICE = f"projects/{P}/locations/{R}/services/mlflow-tracking"
BUCKET = f"{P}-mlflow-artifacts"
ALICE, TEAM, CORP = "user:alice@example.com", "group:ml-team@example.com", "domain:example.com"


@pytest.fixture
def deployed(fake_gcp, gcp_client, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    gcp_client("iam", "v1").projects().serviceAccounts().create(
        name=f"projects/{P}", body={"accountId": "mlflow-server"}).execute()
    fake_gcp.advance(fake_gcp.account_propagation_seconds)  # an account deployed a while ago
    gcp_client("run", "v2").projects().locations().services().create(
        parent=f"projects/{P}/locations/{R}", serviceId="mlflow-tracking",
        body={"template": {
            "serviceAccount": f"mlflow-server@{P}.iam.gserviceaccount.com",
            "containers": [{"image": f"{R}-docker.pkg.dev/{P}/mlflow/server@sha256:1",
                            "ports": [{"containerPort": 8080}]}],
        }},
    ).execute()
    gcp_client("storage", "v1").buckets().insert(project=P, body={"name": BUCKET}).execute()
    fake_gcp.requests.clear()
    return fake_gcp


def _cli(*args: str) -> int:
    return main([*args, "--project", P, "--region", R])


def _invokers(gcp_client) -> set[str]:
    policy = gcp_client("run", "v2").projects().locations().services().getIamPolicy(
        resource=SERVICE).execute()
    return {m for b in policy.get("bindings", []) if b["role"] == "roles/run.invoker"
            for m in b["members"]}


def _bucket_users(gcp_client) -> set[str]:
    policy = gcp_client("storage", "v1").buckets().getIamPolicy(bucket=BUCKET).execute()
    return {m for b in policy.get("bindings", []) if b["role"] == "roles/storage.objectUser"
            for m in b["members"]}


def _writes(fake) -> list[str]:
    return [r.method_id for r in fake.requests if r.mutating]


def test_grant_writes_once_and_a_second_grant_changes_nothing(deployed, gcp_client, capsys):
    assert _cli("access", "grant", ALICE, TEAM, CORP) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"grant roles/run.invoker to {m} on service mlflow-tracking"
                   for m in (ALICE, TEAM, CORP)]
    assert _invokers(gcp_client) == {ALICE, TEAM, CORP}
    assert _writes(deployed) == ["run.projects.locations.services.setIamPolicy"]
    deployed.requests.clear()
    assert _cli("access", "grant", ALICE) == 0
    assert capsys.readouterr().out.strip() == "No changes."
    assert _writes(deployed) == []


def test_revoke_and_list(deployed, gcp_client, capsys):
    _cli("access", "grant", ALICE, TEAM)
    capsys.readouterr()
    assert _cli("access", "revoke", TEAM) == 0
    assert capsys.readouterr().out.strip() == (
        f"revoke roles/run.invoker from {TEAM} on service mlflow-tracking"
    )
    assert _cli("access", "list") == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [
        ["MEMBER", "ROLE", "RESOURCE"],
        [ALICE, "roles/run.invoker", "service", "mlflow-tracking"],
    ]
    assert _cli("access", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [
        {"member": ALICE, "role": "roles/run.invoker", "resource": "service mlflow-tracking"}
    ]


def test_revoking_a_configured_member_warns_that_up_would_grant_it_again(deployed, capsys):
    _cli("access", "grant", ALICE)
    capsys.readouterr()
    assert _cli("access", "revoke", ALICE, "--set", f"access.members={ALICE}") == 0
    err = capsys.readouterr().err
    assert f"Warning: {ALICE} is in access.members of the config" in err


@pytest.mark.parametrize("member", ["allUsers", "allAuthenticatedUsers"])
@pytest.mark.parametrize("mode", ["private", "public"])
def test_public_members_are_never_granted(deployed, gcp_client, capsys, member, mode):
    # Public is the invoker check off (access.mode = public, `up --allow-public`), which works
    # under domain-restricted sharing, where Google refuses these members in any policy.
    assert _cli("access", "grant", member, "--set", f"access.mode={mode}") == 2
    assert capsys.readouterr().err.strip() == (
        f'Error: {member}: is not granted: a public server is access.mode = "public" and `mlflow-gcp up '
        "--allow-public` (Cloud Run's invoker check off, which domain-restricted sharing allows)"
    )
    assert deployed.requests == []  # refused before any API call
    assert _invokers(gcp_client) == set()


def test_bad_members_are_named(deployed, capsys):
    assert _cli("access", "grant", "alice@example.com", "user:bob@example.com") == 2
    assert capsys.readouterr().err.strip() == (
        "Error: alice@example.com: expected user:EMAIL, group:EMAIL, serviceAccount:EMAIL or "
        "domain:DOMAIN"
    )


def test_direct_artifacts_also_grant_the_bucket(deployed, gcp_client, capsys):
    assert _cli("access", "grant", ALICE, "--set", "artifacts.mode=direct") == 0
    assert capsys.readouterr().out.splitlines() == [
        f"grant roles/run.invoker to {ALICE} on service mlflow-tracking",
        f"grant roles/storage.objectUser to {ALICE} on bucket {BUCKET}",
    ]
    assert _bucket_users(gcp_client) == {ALICE}
    assert _cli("access", "revoke", ALICE, "--set", "artifacts.mode=direct") == 0
    assert _bucket_users(gcp_client) == set() and _invokers(gcp_client) == set()


def test_not_deployed_says_run_up(fake_gcp, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert _cli("access", "grant", ALICE) == 1
    assert capsys.readouterr().err.strip() == (
        f"Error: Cloud Run service mlflow-tracking is not deployed in project {P}, region {R} "
        "(run `mlflow-gcp up` first)"
    )


def test_create_sa_is_keyless_and_grants_impersonation_on_request(deployed, gcp_client, capsys,
                                                                   tmp_path):
    email = f"nightly-jobs@{P}.iam.gserviceaccount.com"
    assert _cli("access", "create-sa", "nightly-jobs", "--impersonator", ALICE) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == [
        f"create service account {email} in project {P}",
        f"grant roles/run.invoker to serviceAccount:{email} on service mlflow-tracking",
        f"grant roles/iam.serviceAccountTokenCreator to {ALICE} on service account {email}",
    ]
    assert f"export MLFLOW_GCP_IMPERSONATE_SERVICE_ACCOUNT={email}" in out
    assert _invokers(gcp_client) == {f"serviceAccount:{email}"}
    sa_policy = gcp_client("iam", "v1").projects().serviceAccounts().getIamPolicy(
        resource=f"projects/{P}/serviceAccounts/{email}").execute()
    assert sa_policy["bindings"] == [
        {"role": "roles/iam.serviceAccountTokenCreator", "members": [ALICE]}
    ]
    assert not any(r.method_id == "iam.projects.serviceAccounts.keys.create"
                   for r in deployed.requests)  # keyless
    assert not list(tmp_path.glob("*.json"))
    deployed.requests.clear()
    assert _cli("access", "create-sa", "nightly-jobs", "--impersonator", ALICE) == 0
    assert "No changes." in capsys.readouterr().out
    assert _writes(deployed) == []


def test_create_sa_writes_a_key_only_when_asked_with_mode_0600(deployed, capsys, tmp_path):
    key = tmp_path / "nightly-key.json"
    assert _cli("access", "create-sa", "nightly-jobs", "--key", str(key)) == 0
    captured = capsys.readouterr()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert json.loads(key.read_text())["client_email"] == f"nightly-jobs@{P}.iam.gserviceaccount.com"
    assert f"Warning: wrote a service-account key to {key} (mode 0600)" in captured.err
    assert "PRIVATE KEY" not in captured.out + captured.err
    assert _cli("access", "create-sa", "nightly-jobs", "--key", str(key)) == 2
    assert "exists; not overwriting" in capsys.readouterr().err


def test_create_sa_rejects_bad_names(deployed, capsys):
    assert _cli("access", "create-sa", "Bad_Name") == 2
    assert capsys.readouterr().err.startswith("Error: name: service account ids are")
    assert deployed.requests == []
