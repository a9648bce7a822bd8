"""Shared by the tests of the ops commands: a deployment made by `init` + `up` on the fake."""

from __future__ import annotations

import pytest

from mlflow_gcp import config
from mlflow_gcp.cli import main as cli_main
from mlflow_gcp.gcp import errors as gerrors
from mlflow_gcp.gcp.clients import Clients
from mlflow_gcp.plan.steps import Context

PROJECT = "acme-ml-prod"
REGION = "europe-west9"
SERVICE = f"projects/{PROJECT}/locations/{REGION}/services/mlflow-tracking"
INSTANCE_KEY = f"{PROJECT}/mlflow-db"
MEMBER = "user:ann@example.com"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_GCP_CREDENTIALS_FILE", "MLFLOW_GCP_IMPERSONATE_SERVICE_ACCOUNT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def deployed(fake_gcp, workdir, capsys, request):
    """`init` + `up` through the CLI; the fake's log cleared; returns the loaded Config. A test
    module's DEPLOY_SETTINGS (["section.key=value", ...]) are passed to init as --set."""
    extra = [arg for setting in getattr(request.module, "DEPLOY_SETTINGS", ()) for arg in ("--set", setting)]
    assert cli_main.main(["init", "--project", PROJECT, "--set", f"access.members={MEMBER}", *extra]) == 0
    assert cli_main.main(["up", "--yes"]) == 0
    capsys.readouterr()
    fake_gcp.clear_log()
    return config.load(workdir / "mlflow-gcp.toml", env={})


def ctx_for(cfg, lines: list | None = None) -> Context:
    clients = Clients.from_env(cfg.project, retry=gerrors.NO_RETRY)  # waits advance the fake's clock
    return Context(cfg, clients, say=(lines.append if lines is not None else (lambda s: None)))


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def writes(fake, method_id_prefix: str = "") -> list[str]:
    return [r.method_id for r in fake.mutating_requests() if r.method_id.startswith(method_id_prefix)]
