"""`init` and `destroy` through the CLI, against the fake of Google's APIs."""

from __future__ import annotations

import json

import pytest

from mlflow_gcp import config
from mlflow_gcp.cli import main as cli_main

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server  # noqa: F401

PROJECT = "acme-ml-prod"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_init_writes_a_valid_config_from_flags_and_refuses_to_overwrite(workdir, capsys):
    assert cli_main.main(["init", "--project", PROJECT, "--region", "us-central1",
                          "--set", "database.tier=db-g1-small"]) == 0
    cfg = config.load(workdir / "mlflow-gcp.toml", env={})
    assert (cfg.project, cfg.region, cfg.database.tier) == (PROJECT, "us-central1", "db-g1-small")
    capsys.readouterr()
    assert cli_main.main(["init", "--project", "other-project"]) == 1
    assert "--force" in capsys.readouterr().err
    assert config.load(workdir / "mlflow-gcp.toml", env={}).project == PROJECT
    assert cli_main.main(["init", "--project", "other-project", "--force"]) == 0
    assert config.load(workdir / "mlflow-gcp.toml", env={}).project == "other-project"


def test_init_without_a_project_off_a_terminal_is_a_clear_error(workdir, capsys):
    assert cli_main.main(["init"]) == 2
    assert "project: required" in capsys.readouterr().err
    assert not (workdir / "mlflow-gcp.toml").exists()


def _deploy(workdir):
    assert cli_main.main(["init", "--project", PROJECT]) == 0
    assert cli_main.main(["up", "--yes"]) == 0


def test_destroy_needs_the_project_id(fake_gcp, workdir, capsys):
    _deploy(workdir)
    fake_gcp.clear_log()
    capsys.readouterr()
    assert cli_main.main(["destroy", "--yes"]) == 4
    assert f"--confirm {PROJECT}" in capsys.readouterr().err
    assert cli_main.main(["destroy", "--yes", "--confirm", "someone-else"]) == 4
    assert fake_gcp.mutating_requests() == []


def test_destroy_deletes_in_reverse_order_keeps_a_backup_and_twice_is_a_no_op(fake_gcp, workdir, capsys):
    _deploy(workdir)
    cfg = config.load(workdir / "mlflow-gcp.toml", env={})
    capsys.readouterr()
    fake_gcp.clear_log()
    assert cli_main.main(["destroy", "--yes", "--confirm", PROJECT]) == 0
    out = capsys.readouterr().out
    writes = [r.method_id for r in fake_gcp.mutating_requests()]
    # The service goes before what it uses; protection is lifted before the instance is deleted.
    assert writes.index("run.projects.locations.services.delete") < writes.index("sql.instances.delete")
    assert writes.index("sql.instances.patch") < writes.index("sql.instances.delete")
    delete = next(r for r in fake_gcp.mutating_requests() if r.method_id == "sql.instances.delete")
    assert delete.query.get("enableFinalBackup") in ("true", "True", True)
    assert "Kept: final backup of mlflow-db" in out
    assert not fake_gcp.state("sqladmin") and not fake_gcp.state("run") and not fake_gcp.state("storage")
    assert not fake_gcp.state("iam") and not fake_gcp.state("secretmanager")
    assert cfg.server_service_account_email not in json.dumps(fake_gcp.modules["cloudresourcemanager"].iam.policies)

    fake_gcp.clear_log()
    assert cli_main.main(["destroy", "--yes", "--confirm", PROJECT]) == 0
    assert "Nothing to delete." in capsys.readouterr().out
    assert fake_gcp.mutating_requests() == []


def test_destroy_keep_bucket_and_no_backup(fake_gcp, workdir, capsys):
    _deploy(workdir)
    cfg = config.load(workdir / "mlflow-gcp.toml", env={})
    fake_gcp.clear_log()
    capsys.readouterr()
    assert cli_main.main(["destroy", "--yes", "--confirm", PROJECT, "--keep-bucket", "--no-backup"]) == 0
    out = capsys.readouterr().out
    assert f"Kept: bucket gs://{cfg.bucket_name}" in out and "final backup" not in out
    assert cfg.bucket_name in fake_gcp.state("storage")
    # The deleted server account keeps no access to the kept bucket.
    assert cfg.server_service_account_email not in json.dumps(fake_gcp.modules["storage"].iam.policies)
    delete = next(r for r in fake_gcp.mutating_requests() if r.method_id == "sql.instances.delete")
    assert "enableFinalBackup" not in delete.query
    # `up` again: Cloud SQL keeps a deleted instance's name for a week, and says so...
    capsys.readouterr()
    assert cli_main.main(["up", "--yes"]) == 1
    err = capsys.readouterr().err
    assert "mlflow-db belonged to a recently deleted Cloud SQL instance" in err
    assert "--set database.instance=mlflow-db-2" in err
    # ... and with a new name everything comes back, the kept bucket adopted as it is.
    assert cli_main.main(["up", "--yes", "--set", "database.instance=mlflow-db-2"]) == 0
    assert f"{PROJECT}/mlflow-db-2" in fake_gcp.state("sqladmin")


def test_a_destroy_interrupted_anywhere_finishes_when_rerun(fake_gcp, workdir, capsys):
    from mlflow_gcp.errors import GcpError

    _deploy(workdir)
    baseline = None
    n = 1
    while True:
        fake_gcp.reset()
        assert cli_main.main(["up", "--yes"]) == 0
        fake_gcp.clear_log()
        if baseline is None:
            assert cli_main.main(["destroy", "--yes", "--confirm", PROJECT]) == 0
            baseline = len(fake_gcp.mutating_requests())
            continue
        if n > baseline:
            break
        # 400 is not retried, so the CLI (with its real retry policy) stops right there.
        fake_gcp.fail_mutation(n, status=400, after_apply=(n % 2 == 0))
        with pytest.raises(GcpError):
            cli_main.main(["--debug", "destroy", "--yes", "--confirm", PROJECT])
        fake_gcp.clear_faults()
        assert cli_main.main(["destroy", "--yes", "--confirm", PROJECT]) == 0, f"rerun after fault {n}"
        left = {api: list(fake_gcp.state(api)) for api in ("sqladmin", "run", "storage", "iam", "secretmanager",
                                                          "artifactregistry")}
        assert not any(left.values()), f"fault {n} left {left}"
        n += 1
    assert baseline >= 8


def test_a_failed_up_records_what_it_applied_and_the_error(fake_gcp, workdir, capsys):
    assert cli_main.main(["init", "--project", PROJECT]) == 0
    fake_gcp.fail(403, method_id="storage.buckets.insert", grpc_status="PERMISSION_DENIED",
                  message="me@example.com does not have storage.buckets.create access to the Google Cloud project.")
    assert cli_main.main(["up", "--yes"]) == 1
    [record] = [json.loads(line) for line in (workdir / ".mlflow-gcp" / "history.jsonl").read_text().splitlines()]
    assert "create Cloud SQL instance mlflow-db" in record["changed"]
    assert not any("bucket" in c for c in record["changed"] if c.startswith("create bucket"))
    assert "storage.buckets.create" in record["error"] and "roles/storage.admin" in record["error"]
