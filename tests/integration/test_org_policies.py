"""Organizations created since 2024 enforce two policies by default (issue 14, item 4), and the
fake enforces them when switched on: domain-restricted sharing (iam.allowedPolicyMemberDomains: no
allUsers / allAuthenticatedUsers in any IAM policy) and no service-account keys
(iam.disableServiceAccountKeyCreation). Public mode works there through Cloud Run's invoker check
off (invokerIamDisabled, Google's recommended way), and `access create-sa --key` says why it cannot
and what to do instead."""

from __future__ import annotations

import json

import pytest
from googleapiclient.errors import HttpError

from mlflow_gcp.errors import OrgPolicyDenied
from mlflow_gcp.gcp import run as run_api

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401
from tests.fakegcp.server import NEW_ORG_POLICIES
from tests.integration.ops_support import PROJECT, REGION, SERVICE, ctx_for, deployed, run_cli, workdir  # noqa: F401


@pytest.fixture
def new_org(fake_gcp):
    fake_gcp.enforce_org_policy(*NEW_ORG_POLICIES)
    return fake_gcp


def _public_bindings(fake) -> list[str]:
    return [m for b in fake.api("run").iam.get(SERVICE).get("bindings", []) for m in b["members"]
            if m in ("allUsers", "allAuthenticatedUsers")]


def test_the_fake_refuses_public_members_as_google_does(deployed, new_org, gcp_client):
    services = gcp_client("run", "v2").projects().locations().services()
    policy = services.getIamPolicy(resource=SERVICE).execute()
    policy["bindings"] = [{"role": "roles/run.invoker", "members": ["allUsers"]}]
    with pytest.raises(HttpError) as err:
        services.setIamPolicy(resource=SERVICE, body={"policy": policy}).execute()
    error = json.loads(err.value.content)["error"]
    assert (error["code"], error["status"]) == (400, "FAILED_PRECONDITION")
    assert error["message"] == ("One or more users named in the policy do not belong to a permitted customer,  "
                                "perhaps due to an organization policy.")
    assert error["details"][0]["violations"][0]["type"] == "constraints/iam.allowedPolicyMemberDomains"
    # Through the tool's error table: the policy by name, and what to do.
    ctx = ctx_for(deployed)
    with pytest.raises(OrgPolicyDenied) as denied:
        run_api.set_service_iam_policy(ctx.clients, REGION, "mlflow-tracking", policy)
    assert denied.value.constraint == "iam.allowedPolicyMemberDomains"
    assert "refused by the organization policy iam.allowedPolicyMemberDomains" in denied.value.message
    assert "invokerIamDisabled" in denied.value.hint


def test_public_mode_works_under_domain_restricted_sharing_and_switches_back(workdir, new_org, capsys):
    run_cli(capsys, "init", "--project", PROJECT)
    code, _, err = run_cli(capsys, "plan", "--set", "access.mode=public")
    assert code == 2 and "--allow-public" in err and new_org.requests == []

    code, out, err = run_cli(capsys, "up", "--yes", "--set", "access.mode=public", "--allow-public")
    assert code == 0, err
    assert err.startswith("Warning: access.mode = public: anyone on the internet can read and write this "
                          "MLflow server (Cloud Run's invoker check is off: invokerIamDisabled)")
    assert "0..10 instances, public: Cloud Run's invoker check off" in out
    assert new_org.state("run")[SERVICE]["invokerIamDisabled"] is True
    assert _public_bindings(new_org) == []
    code, out, _ = run_cli(capsys, "access", "list", "--set", "access.mode=public")
    assert "anyone (public)" in out and "invoker check off (invokerIamDisabled)" in out

    # Back to private: plan says what changes, up turns the check on again.
    code, out, _ = run_cli(capsys, "plan")
    assert "    invokerIamDisabled (access.mode): true -> false" in out
    assert run_cli(capsys, "up", "--yes")[0] == 0
    assert new_org.state("run")[SERVICE]["invokerIamDisabled"] is False
    new_org.clear_log()
    assert run_cli(capsys, "up", "--yes")[1].startswith("No changes.")


def test_an_old_public_binding_gives_way_to_the_invoker_check_off_without_a_private_moment(deployed, fake_gcp, capsys):
    run = fake_gcp.api("run")
    policy = run.iam.get(SERVICE)
    policy.setdefault("bindings", []).append({"role": "roles/run.invoker", "members": ["allUsers"]})
    run.iam.set(SERVICE, policy)  # what an earlier version made of access.mode = public
    code, out, err = run_cli(capsys, "up", "--yes", "--set", "access.mode=public", "--allow-public")
    assert code == 0, err
    writes = [r.method_id for r in fake_gcp.mutating_requests()]
    assert writes.index("run.projects.locations.services.patch") < writes.index(
        "run.projects.locations.services.setIamPolicy")
    assert fake_gcp.state("run")[SERVICE]["invokerIamDisabled"] is True and _public_bindings(fake_gcp) == []


def test_doctor_reads_the_invoker_check(deployed, fake_gcp, capsys):
    fake_gcp.state("run")[SERVICE]["invokerIamDisabled"] = True  # switched off by hand
    code, out, _ = run_cli(capsys, "doctor")
    assert ("FAIL  no public access: anyone (the invoker check is off: invokerIamDisabled) may invoke, but "
            "access.mode is private\n      fix: mlflow-gcp up (turns the invoker check back on)") in out
    assert "PASS  caller may invoke: anyone may: Cloud Run's invoker check is off (public)" in out
    code, out, _ = run_cli(capsys, "doctor", "--set", "access.mode=public")
    assert "WARN  no public access: access.mode = public: anyone on the internet may use it" in out


def test_create_sa_key_refused_by_the_org_policy_says_why_and_points_at_impersonation(deployed, new_org, capsys, workdir):
    email = f"nightly-jobs@{PROJECT}.iam.gserviceaccount.com"
    key = workdir / "nightly.json"
    code, out, err = run_cli(capsys, "access", "create-sa", "nightly-jobs", "--key", str(key))
    assert code == 1
    # (after the lines that show the wait for the new account to be known)
    assert err.strip().splitlines()[-1] == (
        f"Error: no key written for {email}: the organization policy iam.disableServiceAccountKeyCreation forbids "
        "service-account keys (the account exists and may use the server) (impersonate it instead: mlflow-gcp "
        "access create-sa nightly-jobs --impersonator user:YOU@example.com, then export "
        f"MLFLOW_GCP_IMPERSONATE_SERVICE_ACCOUNT={email})")
    assert not key.exists() and email in new_org.state("iam")
    # What it points at works under the same policies.
    code, out, err = run_cli(capsys, "access", "create-sa", "nightly-jobs", "--impersonator", "user:ann@example.com")
    assert code == 0, err
    assert f"grant roles/iam.serviceAccountTokenCreator to user:ann@example.com on service account {email}" in out
