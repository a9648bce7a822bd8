"""doctor and lifecycle, against the fake of Google's APIs; the checks that call the server go
through a Cloud Run front stand-in to a real MLflow server, with ID tokens from a local IdP."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from mlflow_gcp import config
from mlflow_gcp.client import tokens
from mlflow_gcp.gcp import iam
from mlflow_gcp.gcp.clients import Clients

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server  # noqa: F401
from tests.integration.conftest import INVOKER
from tests.integration.ops_support import PROJECT, SERVICE, deployed, run_cli, workdir  # noqa: F401

BUCKET = f"{PROJECT}-mlflow-artifacts"


@pytest.fixture
def wired(deployed, fake_gcp, plugin, stack, monkeypatch):
    monkeypatch.setenv("MLFLOW_GCP_API_ROOT", fake_gcp.url)  # the plugin fixture clears MLFLOW_GCP_*
    return stack


def _grant_invoker(capsys) -> None:
    # The invoker account lives in another project; IAM refuses bindings of unknown accounts.
    iam.create_service_account(Clients.from_env("test-project"), INVOKER.split("@")[0], "CI", "CI runner")
    code, _, err = run_cli(capsys, "access", "grant", f"serviceAccount:{INVOKER}")
    assert code == 0, err


def _doctor(capsys, *args) -> tuple[int, dict]:
    code, out, _ = run_cli(capsys, "doctor", "--json", *args)
    return code, {c["check"]: c for c in json.loads(out)}


def test_doctor_on_a_healthy_deployment_with_a_missing_invoker(wired, fake_gcp, capsys):
    code, checks = _doctor(capsys, "--url", wired.front.url)
    assert code == 1
    assert {k: c["status"] for k, c in checks.items() if c["status"] != "PASS"} == {"caller may invoke": "FAIL"}, checks
    assert checks["caller may invoke"]["fix"] == f"mlflow-gcp access grant serviceAccount:{INVOKER}"
    assert checks["health (ID token)"]["detail"].startswith("healthy")
    assert checks["schema at head"]["detail"] == "migrated with the served image, and the server answers the API"
    assert fake_gcp.mutating_requests() == []

    _grant_invoker(capsys)
    code, out, _ = run_cli(capsys, "doctor", "--url", wired.front.url)
    assert code == 0, out
    assert f"PASS  caller may invoke: {INVOKER} holds roles/run.invoker" in out
    assert "17 checks: 0 failed, 0 warning(s)." in out


def test_doctor_names_the_fix_for_what_is_wrong(deployed, fake_gcp, capsys):
    run_cli(capsys, "pause", "--yes")
    run = fake_gcp.api("run")
    policy = run.iam.get(SERVICE)
    policy.setdefault("bindings", []).append({"role": "roles/run.invoker", "members": ["allUsers"]})
    run.iam.set(SERVICE, policy)
    fake_gcp.state("storage")[BUCKET]["lifecycle"] = {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 90}}]}
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 1
    assert "WARN  Cloud SQL running: mlflow-db is paused (MLflow answers errors)\n      fix: mlflow-gcp resume" in out
    assert "FAIL  no public access: allUsers may invoke, but access.mode is private\n      fix: mlflow-gcp up (removes them)" in out
    assert "FAIL  lifecycle safety: a Delete rule covers the whole bucket" in out
    assert "fix: mlflow-gcp lifecycle set --action archive --days 90" in out
    assert "WARN  health (ID token): health check skipped" in out  # emulated, no token: said, not failed


def test_doctor_stops_early_without_credentials(deployed, fake_gcp, capsys):
    fake_gcp.api("cloudresourcemanager").missing.add(PROJECT)
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 1 and out.startswith("FAIL  credentials and project")
    assert "1 checks: 1 failed" in out


BUILDER = f"mlflow-builder@{PROJECT}.iam.gserviceaccount.com"
REPO = f"projects/{PROJECT}/locations/europe-west9/repositories/mlflow"


def _drop(fake, api: str, resource: str, role: str) -> None:
    module = fake.api(api)
    policy = module.iam.get(resource)
    for b in policy["bindings"]:
        if b["role"] == role:
            b["members"].remove(f"serviceAccount:{BUILDER}")
    module.iam.set(resource, policy)


def test_doctor_passes_the_builder_account_up_made(deployed, fake_gcp, capsys):
    code, checks = _doctor(capsys)
    builder = checks["image builder account"]
    assert builder["status"] == "PASS", builder
    assert builder["detail"] == (f"{BUILDER} may write build logs, read the source in gs://{BUCKET} "
                                 "and push to mlflow")
    assert fake_gcp.mutating_requests() == []


@pytest.mark.parametrize("api, resource, role, where, fix", [
    ("cloudresourcemanager", PROJECT, "roles/logging.logWriter", "project",
     f"gcloud projects add-iam-policy-binding {PROJECT} --member=serviceAccount:{BUILDER} "
     "--role=roles/logging.logWriter"),
    ("storage", BUCKET, "roles/storage.objectViewer", "bucket",
     f"gcloud storage buckets add-iam-policy-binding gs://{BUCKET} --member=serviceAccount:{BUILDER} "
     "--role=roles/storage.objectViewer"),
    ("artifactregistry", REPO, "roles/artifactregistry.writer", "repository",
     f"gcloud artifacts repositories add-iam-policy-binding mlflow --location=europe-west9 --project={PROJECT} "
     f"--member=serviceAccount:{BUILDER} --role=roles/artifactregistry.writer"),
])
def test_doctor_names_the_builder_role_that_is_missing(deployed, fake_gcp, capsys, api, resource, role, where, fix):
    _drop(fake_gcp, api, resource, role)
    code, checks = _doctor(capsys)
    assert code == 1
    builder = checks["image builder account"]
    assert builder["status"] == "FAIL"
    assert builder["detail"] == f"{BUILDER} lacks {role} on the {where} (the next build fails)"
    assert builder["fix"] == fix
    # The server's own permissions are another check, and still fine.
    assert checks["bucket and server permissions"]["status"] == "PASS"
    # What doctor says to run is what `up` would do: after it, the check passes again.
    assert run_cli(capsys, "up", "--yes")[0] == 0
    assert _doctor(capsys)[1]["image builder account"]["status"] == "PASS"


def test_doctor_gives_one_command_line_for_several_missing_builder_roles(deployed, fake_gcp, capsys):
    _drop(fake_gcp, "cloudresourcemanager", PROJECT, "roles/logging.logWriter")
    _drop(fake_gcp, "artifactregistry", REPO, "roles/artifactregistry.writer")
    builder = _doctor(capsys)[1]["image builder account"]
    assert builder["detail"] == (f"{BUILDER} lacks roles/logging.logWriter on the project, "
                                 "roles/artifactregistry.writer on the repository (the next build fails)")
    first, second = builder["fix"].split(" && ")
    assert first.startswith(f"gcloud projects add-iam-policy-binding {PROJECT} ")
    assert second.startswith("gcloud artifacts repositories add-iam-policy-binding mlflow ")


def test_doctor_says_when_the_builder_account_is_disabled_or_gone(deployed, fake_gcp, capsys):
    fake_gcp.state("iam")[BUILDER]["disabled"] = True
    code, checks = _doctor(capsys)
    assert code == 1
    assert checks["image builder account"]["detail"] == f"{BUILDER} is disabled"
    assert checks["image builder account"]["fix"] == f"gcloud iam service-accounts enable {BUILDER} --project={PROJECT}"

    del fake_gcp.state("iam")[BUILDER]
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 1
    assert (f"FAIL  image builder account: {BUILDER} does not exist (Cloud Build builds the image as it)\n"
            "      fix: mlflow-gcp up (creates it with its roles)") in out


def test_doctor_needs_no_builder_when_the_image_is_given(deployed, fake_gcp, capsys):
    del fake_gcp.state("iam")[BUILDER]
    code, out, _ = run_cli(capsys, "doctor", "--set", "service.image=ghcr.io/acme/mlflow:3.17.2")
    assert "PASS  image builder account: not needed: service.image is set, so nothing is built" in out


def _register(front_url: str, source: str, run_id: str | None = None) -> str:
    token = tokens.resolve_source().fetch(front_url).value
    headers = {"Authorization": f"Bearer {token}"}
    name = f"model-{uuid.uuid4().hex[:8]}"
    api = f"{front_url}/api/2.0/mlflow"
    requests.post(f"{api}/registered-models/create", json={"name": name}, headers=headers, timeout=30).raise_for_status()
    resp = requests.post(f"{api}/model-versions/create", json={"name": name, "source": source, **({"run_id": run_id} if run_id else {})},
                         headers=headers, timeout=30)
    resp.raise_for_status()
    return name


def test_lifecycle_refuses_a_delete_prefix_a_model_uses(wired, fake_gcp, capsys):
    name = _register(wired.front.url, f"gs://{BUCKET}/scratch/run-1/model")
    before = json.dumps(fake_gcp.state("storage")[BUCKET]["lifecycle"], sort_keys=True)
    code, out, err = run_cli(capsys, "lifecycle", "set", "--days", "30", "--action", "delete", "--prefix", "scratch/",
                             "--url", wired.front.url, "--yes")
    assert code == 1
    assert "DELETED" in out and f"in use: {name}/1 (gs://{BUCKET}/scratch/run-1/model)" in err
    assert "the rule was not set" in err
    assert json.dumps(fake_gcp.state("storage")[BUCKET]["lifecycle"], sort_keys=True) == before

    code, out, err = run_cli(capsys, "lifecycle", "set", "--days", "30", "--action", "delete", "--prefix", "tmp/",
                             "--url", wired.front.url, "--yes")
    assert code == 0, err
    assert "Checked: no registered model version" in out and f"under gs://{BUCKET}/tmp/" in out
    rules = fake_gcp.state("storage")[BUCKET]["lifecycle"]["rule"]
    assert rules[0] == {"action": {"type": "Delete"}, "condition": {"age": 30, "matchesPrefix": ["tmp/"]}}
    assert rules[1]["condition"]["matchesPrefix"] == ["mlflow-gcp-build/"]  # build sources still expire
    lc = config.load("mlflow-gcp.toml", env={}).artifacts.lifecycle
    assert (lc.action, lc.days, lc.prefix) == ("delete", 30, "tmp/")
    fake_gcp.clear_log()
    assert run_cli(capsys, "up", "--yes")[1].startswith("No changes.")


def test_lifecycle_without_a_reachable_server_warns_and_asks(deployed, fake_gcp, capsys):
    code, out, err = run_cli(capsys, "lifecycle", "set", "--days", "30", "--action", "delete", "--prefix", "tmp/")
    assert code == 4 and "registered models were not checked" in err and "rerun with --yes" in err
    assert fake_gcp.mutating_requests() == []
    code, _, err = run_cli(capsys, "lifecycle", "set", "--days", "30", "--action", "delete")
    assert code == 2 and "a delete rule over the whole bucket" in err

    code, out, _ = run_cli(capsys, "lifecycle", "set", "--days", "60", "--action", "archive",
                           "--storage-class", "COLDLINE", "--yes")
    assert code == 0 and "move to COLDLINE storage: nothing is deleted" in out
    code, out, _ = run_cli(capsys, "lifecycle", "show")
    assert out.splitlines()[1] == "  move objects under the whole bucket older than 60 days to COLDLINE (nothing deleted)"


def test_doctor_counts_an_invoker_role_on_the_project(wired, fake_gcp, capsys):
    iam.create_service_account(Clients.from_env("test-project"), INVOKER.split("@")[0], "CI", "CI runner")
    fake_gcp.advance(fake_gcp.account_propagation_seconds)  # set straight in the fake: no retry there
    crm = fake_gcp.api("cloudresourcemanager")
    policy = crm.iam.get(PROJECT)
    policy.setdefault("bindings", []).append({"role": "roles/run.invoker", "members": [f"serviceAccount:{INVOKER}"]})
    crm.iam.set(PROJECT, policy)
    code, checks = _doctor(capsys, "--url", wired.front.url)
    assert checks["caller may invoke"]["status"] == "PASS"
    assert checks["caller may invoke"]["detail"].endswith("holds roles/run.invoker on the project")


def test_lifecycle_resolves_runs_sources_to_the_bucket(wired, fake_gcp, capsys):
    token = tokens.resolve_source().fetch(wired.front.url).value
    headers = {"Authorization": f"Bearer {token}"}
    api = f"{wired.front.url}/api/2.0/mlflow"
    exp = requests.post(f"{api}/experiments/create", json={"name": f"exp-{uuid.uuid4().hex[:8]}"},
                        headers=headers, timeout=30).json()["experiment_id"]
    run = requests.post(f"{api}/runs/create", json={"experiment_id": exp}, headers=headers, timeout=30).json()["run"]
    name = _register(wired.front.url, f"runs:/{run['info']['run_id']}/model", run["info"]["run_id"])
    code, _, err = run_cli(capsys, "lifecycle", "set", "--days", "30", "--action", "delete", "--prefix", f"{exp}/",
                           "--url", wired.front.url, "--yes")
    assert code == 1, err
    assert f"in use: {name}/1 (gs://{BUCKET}/{exp}/{run['info']['run_id']}/artifacts/model)" in err


def test_status_checks_health_with_an_id_token(wired, fake_gcp, capsys):
    code, out, _ = run_cli(capsys, "status", "--json", "--url", wired.front.url)
    data = json.loads(out)
    assert data["health"] == {"ok": True, "message": "healthy: /health and the MLflow API answer 200"}
    assert data["budget"]["fits"] is True
    assert wired.front.count(200) >= 2
