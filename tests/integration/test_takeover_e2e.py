"""The takeover end to end: a real MLflow 2.9.2 server writes a team's data to PostgreSQL as a
non-superuser role that owns the tables (as the old scripts' hand-made Cloud SQL user does) and
its artifacts to gs:// locations; the fake holds the old scripts' Google resources. `plan`
explains, `up` backs up then migrates with the real entrypoint as that owner (the fake's job
runs it), `relocate-artifacts --apply` serves the old artifacts through the server, and an
invoker-only MLflow client reads everything back identical through the token-checking front.
The seed's Google resources are made by the real gcloud CLI with the old scripts' commands
(tests/support/seed_gcp.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from mlflow_gcp.server import local as local_mod
from mlflow_gcp.server import migrate
from tests.conftest import pg_url
from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401
from tests.fakegcp.gcloud import gcloud_available
from tests.integration.ops_support import run_cli, workdir  # noqa: F401
from tests.support import seed
from tests.support.clientenv import clean_env
from tests.support.clock import FakeClock
from tests.support.cloudrun_front import CloudRunFront
from tests.support.idp import LocalIdentityProvider
from tests.support.seed_gcp import Seed, seed_deployment

pytestmark = [pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.skipif(not gcloud_available(), reason="the gcloud CLI is not installed")]

FRONT_HOST = "mlflow-tracking-574299766670.europe-west9.run.app"
INVOKER = "trainer@acme-ml-prod.iam.gserviceaccount.com"

WRITE = """
import json, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_experiment("team-eval")
with mlflow.start_run(run_name="baseline") as run:
    mlflow.log_params({"model": "xgb", "depth": "6"})
    for step, loss in enumerate([0.9, 0.5, 0.25]):
        mlflow.log_metric("loss", loss, step=step)
    mlflow.set_tag("owner", "bek")
    mlflow.log_text("<html>report</html>", "reports/report.html")
mlflow.register_model(f"runs:/{run.info.run_id}/reports", "eval-report")
"""

READ = """
import json, mlflow, os, sys
from mlflow.tracking import MlflowClient
c = MlflowClient()
exp = c.get_experiment_by_name("team-eval")
runs = c.search_runs([exp.experiment_id])
out = {"experiment": exp.name, "runs": []}
for r in runs:
    out["runs"].append({
        "name": r.info.run_name, "params": r.data.params, "status": r.info.status,
        "tags": {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")},
        "loss": [(m.step, m.value) for m in sorted(c.get_metric_history(r.info.run_id, "loss"), key=lambda m: m.step)],
        "report": open(c.download_artifacts(r.info.run_id, "reports/report.html")).read(),
    })
mv = c.get_model_version("eval-report", "1")
path = mlflow.artifacts.download_artifacts(artifact_uri="models:/eval-report/1")
out["model"] = {"status": mv.status, "files": sorted(os.listdir(path))}
print(json.dumps(out, sort_keys=True))
"""


def _wait_health(url: str, proc: subprocess.Popen) -> None:
    for _ in range(240):
        if proc.poll() is not None:
            raise AssertionError(f"MLflow 2.9.2 exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("MLflow 2.9.2 did not become healthy")


def _runner(dbname: str):
    """The migration job's container: our entrypoint, connected as the job's DB_USER."""
    def run(project, job, env, args):
        task_env = clean_env(DB_URI=f"postgresql://{env['DB_USER']}@127.0.0.1:5432/{dbname}",
                             ARTIFACT_ROOT=env["ARTIFACT_ROOT"], LOG_FORMAT="text")
        done = subprocess.run([sys.executable, "-m", "mlflow_gcp.server", *args], env=task_env,
                              capture_output=True, text=True, timeout=600)
        lines = done.stderr.strip().splitlines()
        return (lines[-1] if lines else "exit 1") if done.returncode else None, done.stderr
    return run


def test_the_old_scripts_deployment_is_taken_over_and_reads_back(fake_gcp, workdir, capsys, gcs_emulator, tmp_path):
    python2 = seed.mlflow2_python()
    with seed.pg_roles("mlflowbek") as (owner,):
        dbname, _ = seed.owned_database(owner)
        db_url = seed.as_user(pg_url(dbname), owner)
        the_seed = Seed(user=owner)
        gcs_emulator.create_bucket(the_seed.bucket)
        old = stack = front = idp = None
        try:
            # 1. The old server and a 2.9.2 client write the team's data.
            port = local_mod.free_port()
            old = subprocess.Popen(
                [python2, "-m", "mlflow", "server", "--backend-store-uri", db_url, "--default-artifact-root",
                 f"gs://{the_seed.bucket}/artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                env=clean_env(STORAGE_EMULATOR_HOST=gcs_emulator.host), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True, start_new_session=True)
            _wait_health(f"http://127.0.0.1:{port}", old)
            old_env = clean_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
                                STORAGE_EMULATOR_HOST=gcs_emulator.host, GOOGLE_CLOUD_PROJECT="local")
            wrote = subprocess.run([python2, "-c", WRITE], env=old_env, capture_output=True, text=True, timeout=300)
            assert wrote.returncode == 0, wrote.stderr[-3000:]
            before = subprocess.run([python2, "-c", READ], env=old_env, capture_output=True, text=True, timeout=300)
            assert before.returncode == 0, before.stderr[-3000:]
            # The group: 2.9.2's `mlflow server` runs gunicorn as a child that outlives a SIGTERM
            # to the CLI alone (a full run left it serving after pytest had exited).
            local_mod.stop_group(old, grace=30)
            assert seed.revision_of(db_url) == seed.SEED_REVISION

            # 2. The fake holds the old scripts' resources; its job runs our real entrypoint.
            seed_deployment(fake_gcp, the_seed)
            fake_gcp.api("run").job_runner = _runner(dbname)
            (workdir / "mlflow-gcp.toml").write_text(
                f'project = "{the_seed.project}"\nregion = "{the_seed.region}"\n'
                f'[access]\nmembers = ["group:ml@acme.com"]\n[database]\nuser = "{owner}"\n')
            code, out, err = run_cli(capsys, "plan")
            assert code == 0, err
            assert "one-way" in out and "allUsers lose roles/run.invoker" in out
            code, out, err = run_cli(capsys, "up", "--yes")
            assert code == 0, err + out
            methods = [r.method_id for r in fake_gcp.mutating_requests()]
            assert methods.index("sql.backupRuns.insert") < methods.index("run.projects.locations.jobs.run")
            assert seed.revision_of(db_url) == migrate.head_revision_from_files()
            code, out, err = run_cli(capsys, "relocate-artifacts", "--apply", "--yes")
            assert code == 0, err + out
            assert "rewrote" in out

            # 3. The new server, private behind the front; an invoker-only client reads back.
            stack = local_mod.LocalStack(
                local_mod.LocalOptions(data_dir=tmp_path, port=local_mod.free_port(), backend_store_uri=db_url,
                                       artifacts_destination=f"gs://{the_seed.bucket}", allowed_hosts=(FRONT_HOST,)),
                base_env=clean_env(STORAGE_EMULATOR_HOST=gcs_emulator.host))
            stack.start()
            clock = FakeClock()
            idp = LocalIdentityProvider(clock=clock).start()
            front = CloudRunFront(stack.opts.url, certs=idp.certs, host=FRONT_HOST, clock=clock,
                                  allowed_invokers=[f"serviceAccount:{INVOKER}"]).start()
            key = idp.write_key_file(tmp_path / "invoker.json", INVOKER)
            after = subprocess.run([sys.executable, "-c", READ], capture_output=True, text=True, timeout=300,
                                   env=clean_env(MLFLOW_TRACKING_URI=front.url, MLFLOW_TRACKING_AUTH="gcp",
                                                 MLFLOW_GCP_CREDENTIALS_FILE=str(key),
                                                 MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"))
            assert after.returncode == 0, after.stderr[-3000:]
            assert json.loads(after.stdout.strip().splitlines()[-1]) == json.loads(before.stdout.strip().splitlines()[-1])
        finally:
            for thing in (front, idp):
                if thing is not None:
                    thing.close()
            if stack is not None:
                stack.stop()
            if old is not None:
                local_mod.stop_group(old, grace=5)
            seed.drop_database(dbname)
