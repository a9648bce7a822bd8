"""Old experiments' gs:// artifact locations: an invoker-only client (no bucket credentials) cannot
read them until `relocate-artifacts --apply` rewrites them to mlflow-artifacts:/, the same objects
served by the server. Real PostgreSQL, GCS emulator, MLflow server, front and client."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from mlflow.tracking import MlflowClient

from mlflow_gcp.server import local as local_mod
from tests.support.clientenv import clean_env
from tests.support.clock import FakeClock
from tests.support.cloudrun_front import CloudRunFront
from tests.support.idp import LocalIdentityProvider

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

FRONT_HOST = "mlflow-old-7x2kq9ab3c-ew.a.run.app"
INVOKER = "trainer@test-project.iam.gserviceaccount.com"
BUCKET = "acme-ml-prod-mlflow-artifacts"

READ = """
import sys
from mlflow.tracking import MlflowClient
print(open(MlflowClient().download_artifacts(sys.argv[1], "notes/hello.txt")).read())
"""


def _entrypoint(url: str, *args: str) -> subprocess.CompletedProcess:
    env = clean_env(DB_URI=url, ARTIFACT_ROOT=f"gs://{BUCKET}", LOG_FORMAT="text")
    return subprocess.run([sys.executable, "-m", "mlflow_gcp.server", "relocate-artifacts", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def _locations(url: str, experiment_id: str, run_id: str) -> tuple[str, str]:
    client = MlflowClient(tracking_uri=url)
    return client.get_experiment(experiment_id).artifact_location, client.get_run(run_id).info.artifact_uri


def test_an_invoker_only_client_reads_old_artifacts_once_relocated(new_database, tmp_path):
    url = new_database()
    stack = local_mod.LocalStack(
        local_mod.LocalOptions(data_dir=tmp_path, port=local_mod.free_port(), backend_store_uri=url,
                               artifacts_destination=f"gs://{BUCKET}", gcs_emulator=True,
                               allowed_hosts=(FRONT_HOST,)),
        base_env=clean_env())
    clock = FakeClock()
    idp = LocalIdentityProvider(clock=clock).start()
    front = None
    try:
        stack.start()  # creates the schema in the empty database, as the migration job would
        # What the old server left: an experiment and a run with gs:// locations, and the object.
        db = MlflowClient(tracking_uri=url)
        experiment_id = db.create_experiment(f"old-{uuid.uuid4().hex[:6]}",
                                             artifact_location=f"gs://{BUCKET}/artifacts/7")
        run_id = db.create_run(experiment_id).info.run_id
        gcs = storage.Client(project="local", credentials=AnonymousCredentials(),
                             client_options={"api_endpoint": stack.env["STORAGE_EMULATOR_HOST"]})
        gcs.bucket(BUCKET).blob(f"artifacts/7/{run_id}/artifacts/notes/hello.txt").upload_from_string(b"old report")
        front = CloudRunFront(stack.opts.url, certs=idp.certs, host=FRONT_HOST, clock=clock,
                              allowed_invokers=[f"serviceAccount:{INVOKER}"]).start()
        key = idp.write_key_file(tmp_path / "invoker.json", INVOKER)
        client_env = clean_env(MLFLOW_TRACKING_URI=front.url, MLFLOW_TRACKING_AUTH="gcp",
                               MLFLOW_GCP_CREDENTIALS_FILE=str(key), MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")

        def read():
            return subprocess.run([sys.executable, "-c", READ, run_id], env=client_env,
                                  capture_output=True, text=True, timeout=180)

        before = read()
        # gs:// is read from the bucket directly, with credentials this client does not have.
        assert before.returncode != 0 and "Failed to download artifacts" in before.stderr

        dry = _entrypoint(url)
        assert dry.returncode == 0, dry.stderr
        assert (f"relocate-artifacts (dry run, nothing changed): 2 artifact location(s) under gs://{BUCKET}/ "
                "(1 experiment locations, 1 run artifact URIs, 0 model version locations") in dry.stderr
        assert _locations(url, experiment_id, run_id)[0] == f"gs://{BUCKET}/artifacts/7"

        done = _entrypoint(url, "--apply")
        assert done.returncode == 0, done.stderr
        assert f"rewrote 2 artifact location(s) under gs://{BUCKET}/" in done.stderr
        assert _locations(url, experiment_id, run_id) == (
            "mlflow-artifacts:/artifacts/7", f"mlflow-artifacts:/artifacts/7/{run_id}/artifacts")

        after = read()
        assert after.returncode == 0, after.stderr[-2000:]
        assert after.stdout.strip() == "old report"
        assert _entrypoint(url).stderr.count("0 artifact location(s)") == 1  # nothing left to rewrite
    finally:
        if front is not None:
            front.close()
        idp.close()
        stack.stop()


def test_relocate_needs_a_gs_root_and_knows_its_arguments(new_database):
    url = new_database()
    bad = subprocess.run([sys.executable, "-m", "mlflow_gcp.server", "relocate-artifacts", "--yes"],
                         env=clean_env(DB_URI=url, ARTIFACT_ROOT=f"gs://{BUCKET}"), capture_output=True, text=True)
    assert bad.returncode == 2 and "relocate-artifacts [--apply]" in bad.stderr
    local = subprocess.run([sys.executable, "-m", "mlflow_gcp.server", "relocate-artifacts"],
                           env=clean_env(DB_URI=url, ARTIFACT_ROOT="/tmp/artifacts", LOG_FORMAT="text"),
                           capture_output=True, text=True)
    assert local.returncode == 2 and "needs the gs:// artifact root" in local.stderr
