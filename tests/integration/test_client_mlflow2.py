"""Clients that stay on MLflow 2.x after the server goes private: the plugin alone
(client-dist/, package mlflow-gcp-client) installs beside MLflow 2.9.2 without upgrading it, and a
real MLflow 2.9.2 client logs and reads back through the token-checking front."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import clean_env
from tests.integration.conftest import INVOKER
from tests.support import seed

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys, mlflow
from mlflow.tracking import MlflowClient
name = sys.argv[1]
exp = mlflow.create_experiment(name)
with mlflow.start_run(experiment_id=exp) as run:
    mlflow.log_param("alpha", "0.5")
    mlflow.log_metric("loss", 0.25, step=3)
    mlflow.log_text("from an MLflow 2 client", "notes/hello.txt")
got = MlflowClient().get_run(run.info.run_id)
path = MlflowClient().download_artifacts(run.info.run_id, "notes/hello.txt")
print(json.dumps({"version": mlflow.__version__, "params": got.data.params, "metrics": got.data.metrics,
                  "artifact": open(path).read()}))
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> tuple[str, Path]:
    """MLflow 2.9.2's python, and a directory holding only the plugin package and its deps, installed
    with pip as a user would (`pip install ./client-dist`), outside the cached MLflow 2 virtualenv."""
    python = seed.mlflow2_python()
    site = tmp_path_factory.mktemp("mlflow2-plugin")
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
                           str(site), str(ROOT / "client-dist")], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"pip install ./client-dist failed: {done.stderr[-2000:]}")
    return python, site


def _run(python: str, site: Path, stack, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-c", SCRIPT, f"mlflow2-{uuid.uuid4().hex[:8]}"],
        env=clean_env(PYTHONPATH=str(site), MLFLOW_TRACKING_URI=stack.front.url,
                      MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", **env),
        capture_output=True, text=True, timeout=300)


def test_the_plugin_installs_beside_mlflow_2_without_upgrading_it(plugin_site):
    _python, site = plugin_site
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert "mlflow_gcp_client" in installed
    assert not installed & {"mlflow", "mlflow_skinny", "mlflow_gcp"}, installed
    # The plugin only: no control plane, no server.
    assert sorted(p.name for p in (site / "mlflow_gcp").iterdir() if p.suffix == ".py") == ["__init__.py", "errors.py"]


def test_an_mlflow_2_9_2_client_works_through_the_private_front(plugin_site, stack):
    python, site = plugin_site
    refused = _run(python, site, stack)  # no plugin selected: Cloud Run's 403
    assert refused.returncode != 0 and "403" in refused.stderr
    done = _run(python, site, stack, MLFLOW_TRACKING_AUTH="gcp", MLFLOW_GCP_CREDENTIALS_FILE=str(stack.key_file))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"version": "2.9.2", "params": {"alpha": "0.5"}, "metrics": {"loss": 0.25},
                      "artifact": "from an MLflow 2 client"}
    passed = [entry for entry in stack.front.log if entry.status == 200]
    assert passed and all(entry.caller == INVOKER for entry in passed)
