"""Secret Manager, Artifact Registry, Cloud Build, Logging and Cloud Scheduler in the fake."""

from __future__ import annotations

import base64

import google_crc32c
import pytest
from googleapiclient.errors import HttpError

from mlflow_gcp import config, image_source
from mlflow_gcp.plan import desired
from tests.fakegcp.apis import build_source
from tests.fakegcp.core.api import project_number
from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401

P, R = "proj-svc", "us-central1"


@pytest.fixture(autouse=True)
def _polls_only(fake_gcp):
    # These test each API's shapes and rules; Google's timing (durations, propagation) has its
    # own tests (test_fakegcp_core.py, test_fakegcp_timing.py) and is on everywhere else.
    fake_gcp.strict(False)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_secret_versions_access_disable_and_iam(fake_gcp, gcp_client):
    secrets = gcp_client("secretmanager", "v1").projects().secrets()
    made = secrets.create(parent=f"projects/{P}", secretId="mlflow-db-password",
                          body={"replication": {"automatic": {}}, "labels": {"app": "mlflow"}}).execute()
    name = made["name"]
    assert name == f"projects/{project_number(P)}/secrets/mlflow-db-password"
    with pytest.raises(HttpError) as info:
        secrets.create(parent=f"projects/{P}", secretId="mlflow-db-password",
                       body={"replication": {"automatic": {}}}).execute()
    assert info.value.status_code == 409
    with pytest.raises(HttpError) as info:
        secrets.create(parent=f"projects/{P}", secretId="other", body={}).execute()
    assert info.value.status_code == 400
    with pytest.raises(HttpError) as info:
        secrets.addVersion(parent=name, body={"payload": {"data": b64(b"pw"), "dataCrc32c": "1"}}).execute()
    assert info.value.status_code == 400
    v1 = secrets.addVersion(parent=name, body={"payload": {
        "data": b64(b"s3cret"), "dataCrc32c": str(google_crc32c.value(b"s3cret"))}}).execute()
    got = secrets.versions().access(name=f"projects/{P}/secrets/mlflow-db-password/versions/latest").execute()
    assert base64.b64decode(got["payload"]["data"]) == b"s3cret" and got["name"] == v1["name"]
    assert "payload" not in secrets.versions().get(name=v1["name"]).execute()
    secrets.versions().disable(name=v1["name"], body={}).execute()
    with pytest.raises(HttpError) as info:
        secrets.versions().access(name=v1["name"]).execute()
    assert info.value.status_code == 400 and b"DISABLED" in info.value.content
    assert secrets.versions().list(parent=name).execute()["versions"][0]["state"] == "DISABLED"
    policy = secrets.getIamPolicy(resource=name).execute()
    policy["bindings"] = [{"role": "roles/secretmanager.secretAccessor", "members": ["user:a@example.com"]}]
    assert secrets.setIamPolicy(resource=name, body={"policy": policy}).execute()["bindings"] == policy["bindings"]
    secrets.delete(name=name).execute()
    with pytest.raises(HttpError) as info:
        secrets.get(name=name).execute()
    assert info.value.status_code == 404


def test_repository_build_and_image(fake_gcp, gcp_client):
    ar = gcp_client("artifactregistry", "v1").projects().locations()
    op = ar.repositories().create(parent=f"projects/{P}/locations/{R}", repositoryId="mlflow",
                                  body={"format": "DOCKER", "description": "images"}).execute()
    op = ar.operations().get(name=op["name"]).execute()
    assert op["done"] and op["response"]["format"] == "DOCKER"
    repo = f"projects/{P}/locations/{R}/repositories/mlflow"
    with pytest.raises(HttpError) as info:
        ar.repositories().create(parent=f"projects/{P}/locations/{R}", repositoryId="mlflow",
                                 body={"format": "DOCKER"}).execute()
    assert info.value.status_code == 409

    fake_gcp.api("storage").reset()
    st = gcp_client("storage", "v1")
    st.buckets().insert(project=P, body={"name": "src-bkt-svc"}).execute()
    fake_gcp.api("storage").put_object("src-bkt-svc", "source.tgz", image_source.packed()[0])
    image = f"{R}-docker.pkg.dev/{P}/mlflow/server:v1"
    cb = gcp_client("cloudbuild", "v1").projects()
    op = cb.builds().create(projectId=P, body={
        "source": {"storageSource": {"bucket": "src-bkt-svc", "object": "source.tgz"}},
        "steps": [{"name": "gcr.io/cloud-builders/docker", "args": ["build", "-t", image, "."]}],
        "images": [image]}).execute()
    assert op["metadata"]["build"]["status"] in ("QUEUED", "WORKING")
    done = gcp_client("cloudbuild", "v1").operations().get(name=op["name"]).execute()
    build = done["response"]
    assert build["status"] == "SUCCESS" and build["results"]["images"][0]["name"] == image
    digest = build["results"]["images"][0]["digest"]
    assert digest.startswith("sha256:")
    assert cb.builds().get(projectId=P, id=build["id"]).execute()["status"] == "SUCCESS"
    images = ar.repositories().dockerImages().list(parent=repo).execute()["dockerImages"]
    assert images[0]["uri"].endswith(f"/server@{digest}") and images[0]["tags"] == ["v1"]

    op = cb.builds().create(projectId=P, body={
        "source": {"storageSource": {"bucket": "src-bkt-svc", "object": "missing.tgz"}},
        "steps": [{"name": "gcr.io/cloud-builders/docker"}], "images": [image]}).execute()
    failed = gcp_client("cloudbuild", "v1").operations().get(name=op["name"]).execute()
    assert "error" in failed and failed["metadata"]["build"]["status"] == "FAILURE"
    with pytest.raises(HttpError) as info:
        cb.builds().create(projectId=P, body={"steps": []}).execute()
    assert info.value.status_code == 400


def _build_of(fake_gcp, gcp_client, source: bytes) -> dict:
    """The tool's own build body (its serviceAccount left out) run on `source`; the finished Build."""
    fake_gcp.api("storage").reset()
    gcp_client("storage", "v1").buckets().insert(project=P, body={"name": "src-bkt-svc"}).execute()
    fake_gcp.api("storage").put_object("src-bkt-svc", "source.tgz", source)
    body = desired.build(config.from_dict({"project": P}), "src-bkt-svc", "source.tgz")
    body.pop("serviceAccount")
    op = gcp_client("cloudbuild", "v1").projects().builds().create(projectId=P, body=body).execute()
    done = gcp_client("cloudbuild", "v1").operations().get(name=op["name"]).execute()
    return done.get("response") or done["metadata"]["build"]


def _context(tmp_path, dockerfile: str | None) -> bytes:
    root = tmp_path / "ctx"
    (root / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        (root / name).write_bytes((image_source.source_root() / name).read_bytes())
    if dockerfile is not None:
        (root / "Dockerfile").write_text(dockerfile)
    return image_source.source_tarball(root)


# The Dockerfile before upgrade's version became real: no ARG, so the build-arg was dropped.
UNDECLARED = "FROM python:3.11-slim\nCOPY . .\nRUN pip install --no-cache-dir -c constraints.txt .\n"


def test_a_build_arg_the_dockerfile_does_not_declare_fails_the_build(fake_gcp, gcp_client, tmp_path):
    build = _build_of(fake_gcp, gcp_client, _context(tmp_path, UNDECLARED))
    assert build["status"] == "FAILURE" and build["failureInfo"]["type"] == "USER_BUILD_STEP"
    assert "build-args [MLFLOW_VERSION] were not consumed" in build["statusDetail"]
    assert "results" not in build and fake_gcp.api("artifactregistry").state == {}
    # Declared (before FROM, lower-case keyword, a continued line), the same source builds.
    declared = "arg BASE=python:3.11-slim \\\n    MLFLOW_VERSION\n" + UNDECLARED
    assert _build_of(fake_gcp, gcp_client, _context(tmp_path / "b", declared))["status"] == "SUCCESS"


def test_the_checkout_builds_and_a_broken_source_does_not(fake_gcp, gcp_client, tmp_path):
    assert _build_of(fake_gcp, gcp_client, image_source.packed()[0])["status"] == "SUCCESS"
    build = _build_of(fake_gcp, gcp_client, b"not a tarball")
    assert build["status"] == "FAILURE" and build["failureInfo"]["type"] == "FETCH_SOURCE_FAILED"
    build = _build_of(fake_gcp, gcp_client, _context(tmp_path, None))
    assert build["status"] == "FAILURE" and "open ./Dockerfile: no such file or directory" in build["statusDetail"]


def test_declared_args_and_proxy_args():
    text = "ARG A=1 B\nFROM x\n# ARG C\nRUN echo ARG D\n  Arg E=\"x y\"\n"
    assert build_source.declared_args(text) == {"A", "B", "E"}
    files = {"Dockerfile": b"FROM x\n"}
    build_source.check_steps([{"name": "gcr.io/cloud-builders/docker",
                               "args": ["build", "--build-arg", "HTTPS_PROXY=http://p", "."]}], files)
    with pytest.raises(build_source.StepFailed, match=r"\[NOPE\]"):
        build_source.check_steps([{"name": "gcr.io/cloud-builders/docker",
                                   "args": ["build", "--build-arg=NOPE=1", "."]}], files)


def test_logging_entries_list_with_filter(fake_gcp, gcp_client):
    logs = fake_gcp.api("logging")
    run_res = {"type": "cloud_run_revision", "labels": {"service_name": "mlflow", "location": R}}
    logs.add_entry(P, "booting", severity="INFO", resource=run_res, timestamp="2026-01-01T00:00:00Z")
    logs.add_entry(P, "boom", severity="ERROR", resource=run_res, timestamp="2026-01-01T00:00:01Z")
    logs.add_entry(P, "other", severity="ERROR", resource={"type": "gce_instance", "labels": {}},
                   timestamp="2026-01-01T00:00:02Z")
    entries = gcp_client("logging", "v2").entries()
    got = entries.list(body={
        "resourceNames": [f"projects/{P}"], "orderBy": "timestamp desc",
        "filter": 'resource.type="cloud_run_revision" AND resource.labels.service_name="mlflow" '
                  'AND severity>=WARNING'}).execute()
    assert [e["textPayload"] for e in got["entries"]] == ["boom"]
    either = entries.list(body={"resourceNames": [f"projects/{P}"], "filter":
        '(resource.type="cloud_run_revision" OR resource.type="gce_instance") AND NOT textPayload:"boot"'}).execute()
    assert [e["textPayload"] for e in either["entries"]] == ["boom", "other"]
    page = entries.list(body={"resourceNames": [f"projects/{P}"], "pageSize": 2}).execute()
    assert len(page["entries"]) == 2 and page["nextPageToken"]
    with pytest.raises(HttpError):
        entries.list(body={"resourceNames": [f"projects/{P}"], "filtr": "x"}).execute()


def test_scheduler_jobs_pause_resume(gcp_client):
    jobs = gcp_client("cloudscheduler", "v1").projects().locations().jobs()
    parent = f"projects/{P}/locations/{R}"
    body = {"name": f"{parent}/jobs/nightly-backup", "schedule": "0 3 * * *", "timeZone": "Etc/UTC",
            "httpTarget": {"uri": "https://sqladmin.googleapis.com/v1/projects/p/instances/i/backupRuns",
                           "httpMethod": "POST", "oauthToken": {"serviceAccountEmail": "a@b.iam.gserviceaccount.com"}}}
    made = jobs.create(parent=parent, body=body).execute()
    assert made["state"] == "ENABLED"
    with pytest.raises(HttpError) as info:
        jobs.create(parent=parent, body={**body, "name": f"{parent}/jobs/other", "schedule": "every day"}).execute()
    assert info.value.status_code == 400 and b"Schedule" in info.value.content
    with pytest.raises(HttpError) as info:
        jobs.create(parent=parent, body=body).execute()
    assert info.value.status_code == 409
    assert jobs.pause(name=body["name"], body={}).execute()["state"] == "PAUSED"
    assert jobs.resume(name=body["name"], body={}).execute()["state"] == "ENABLED"
    patched = jobs.patch(name=body["name"], updateMask="schedule", body={"schedule": "0 4 * * *"}).execute()
    assert patched["schedule"] == "0 4 * * *" and patched["httpTarget"]["httpMethod"] == "POST"
    assert [j["name"] for j in jobs.list(parent=parent).execute()["jobs"]] == [body["name"]]
    jobs.delete(name=body["name"]).execute()
    with pytest.raises(HttpError) as info:
        jobs.get(name=body["name"]).execute()
    assert info.value.status_code == 404


def test_mutations_leave_admin_activity_audit_entries(fake_gcp, gcp_client):
    fake_gcp.audit_logs = True
    gcp_client("iam", "v1").projects().serviceAccounts().create(
        name=f"projects/{P}", body={"accountId": "audited-sa"}).execute()
    gcp_client("iam", "v1").projects().serviceAccounts().list(name=f"projects/{P}").execute()
    got = gcp_client("logging", "v2").entries().list(body={
        "resourceNames": [f"projects/{P}"],
        "filter": f'logName="projects/{P}/logs/cloudaudit.googleapis.com%2Factivity"'}).execute()
    payloads = [e["protoPayload"] for e in got["entries"]]
    assert [(p["serviceName"], p["methodName"], p["resourceName"]) for p in payloads] == [
        ("iam.googleapis.com", "iam.projects.serviceAccounts.create", f"projects/{P}")]
