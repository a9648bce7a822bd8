"""`mlflow-gcp env` and the service URL lookup (against the Google API fake)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlflow_gcp.cli import client_cmds
from mlflow_gcp.cli.main import main
from mlflow_gcp.ops import endpoint
from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401

URL = "https://mlflow-tracking-123456789.europe-west9.run.app"
MLFLOW_GCP = shutil.which("mlflow-gcp", path=str(Path(sys.executable).parent)) or shutil.which(
    "mlflow-gcp"
)


def test_env_prints_the_two_exports(capsys):
    assert main(["env", "--url", URL + "/", "--shell", "sh"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"export MLFLOW_TRACKING_URI={URL}", "export MLFLOW_TRACKING_AUTH=gcp"]
    assert all(line.startswith("#") for line in out[2:])


@pytest.mark.skipif(MLFLOW_GCP is None, reason="the mlflow-gcp script is not installed")
def test_env_works_with_eval_in_bash():
    script = f'eval "$({MLFLOW_GCP} env --url {URL} --shell sh)"; echo "$MLFLOW_TRACKING_URI|$MLFLOW_TRACKING_AUTH"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{URL}|gcp"


def test_env_quotes_what_a_shell_would_misread():
    odd = "https://host.example.com/a path/it's"
    assert client_cmds.env_lines(odd, "sh")[0] == (
        "export MLFLOW_TRACKING_URI='https://host.example.com/a path/it'\"'\"'s'"
    )
    assert client_cmds.env_lines(odd, "powershell")[0] == (
        "$Env:MLFLOW_TRACKING_URI = 'https://host.example.com/a path/it''s'"
    )
    assert client_cmds.env_lines(URL, "fish")[:2] == [
        f"set -gx MLFLOW_TRACKING_URI {URL};", "set -gx MLFLOW_TRACKING_AUTH gcp;"
    ]


@pytest.mark.parametrize("bad", ["ftp://host", "run.app", "https://", f"{URL}/?q=1"])
def test_a_bad_url_is_one_line(bad, capsys):
    assert main(["env", "--url", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: url: ") and len(err.strip().splitlines()) == 1


def test_without_url_or_project_it_says_to_pass_url(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_GCP_PROJECT", "MLFLOW_GCP_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    assert main(["env"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: project: ") and "pass --url https://" in err


P, R = "proj-client", "europe-west9"


def _deploy(fake_gcp, gcp_client, service: str = "mlflow-tracking") -> None:
    iam = gcp_client("iam", "v1")
    iam.projects().serviceAccounts().create(
        name=f"projects/{P}", body={"accountId": "mlflow-server"}).execute()
    fake_gcp.advance(fake_gcp.account_propagation_seconds)  # an account deployed a while ago
    run = gcp_client("run", "v2")
    run.projects().locations().services().create(
        parent=f"projects/{P}/locations/{R}", serviceId=service,
        body={"template": {
            "serviceAccount": f"mlflow-server@{P}.iam.gserviceaccount.com",
            "containers": [{"image": f"{R}-docker.pkg.dev/{P}/mlflow/server@sha256:1",
                            "ports": [{"containerPort": 8080}]}],
        }},
    ).execute()


def test_env_reads_the_url_of_the_deployed_service(fake_gcp, gcp_client, capsys, monkeypatch,
                                                   tmp_path):
    monkeypatch.chdir(tmp_path)
    _deploy(fake_gcp, gcp_client)
    assert main(["env", "--project", P, "--region", R, "--shell", "sh"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("export MLFLOW_TRACKING_URI=https://mlflow-tracking-")
    assert first.endswith(f".{R}.run.app")


def test_env_before_up_says_not_deployed(fake_gcp, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["env", "--project", P, "--region", R]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"Error: Cloud Run service mlflow-tracking is not deployed in project {P}, region {R} "
        f"(run `mlflow-gcp up`, or {endpoint.PASS_URL_HINT})"
    )
