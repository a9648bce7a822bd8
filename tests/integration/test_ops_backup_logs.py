"""backup create|list|restore and logs through the CLI, against the fake of Google's APIs."""

from __future__ import annotations

import json

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server  # noqa: F401
from tests.integration.ops_support import PROJECT, deployed, run_cli, workdir, writes  # noqa: F401


def test_backup_create_and_list(deployed, fake_gcp, capsys):
    code, out, _ = run_cli(capsys, "backup", "create", "--description", "before the demo")
    assert code == 0 and out.strip().endswith("done (SUCCESSFUL).")
    code, out, _ = run_cli(capsys, "backup", "list", "--json")
    rows = json.loads(out)
    assert [(r["type"], r["status"], r["description"]) for r in rows] == [("ON_DEMAND", "SUCCESSFUL", "before the demo")]
    code, out, _ = run_cli(capsys, "backup", "list")
    assert out.splitlines()[0].split() == ["ID", "TYPE", "STATUS", "TIME", "DESCRIPTION"]


def test_restore_takes_a_safety_backup_first(deployed, fake_gcp, capsys):
    nightly = fake_gcp.api("sqladmin").add_backup(PROJECT, "mlflow-db")
    code, out, _ = run_cli(capsys, "backup", "restore", nightly["id"], "--yes")
    assert code == 0, out
    ids = [r.method_id for r in fake_gcp.mutating_requests()]
    # safety backup, then the restore, then the schema brought to the served MLflow
    assert ids.index("sql.backupRuns.insert") < ids.index("sql.instances.restoreBackup") < ids.index(
        "run.projects.locations.jobs.run")
    assert fake_gcp.api("sqladmin").restores == [("mlflow-db", nightly["id"])]
    safety = [b for b in fake_gcp.api("sqladmin").backups.values() if b["type"] == "ON_DEMAND"]
    assert safety[0]["status"] == "SUCCESSFUL"
    assert f"safety backup {safety[0]['id']}" in out and f"backup restore {safety[0]['id']} undoes this" in out


def test_restore_never_runs_when_the_safety_backup_fails(deployed, fake_gcp, capsys):
    nightly = fake_gcp.api("sqladmin").add_backup(PROJECT, "mlflow-db")
    fake_gcp.fail_next_operation(api="sqladmin", message="disk quota exceeded")
    code, _, err = run_cli(capsys, "backup", "restore", nightly["id"], "--yes")
    assert code == 1
    assert "the safety backup failed, so backup" in err and "was NOT restored" in err
    assert "restoreBackup" not in " ".join(r.method_id for r in fake_gcp.requests)
    assert fake_gcp.api("sqladmin").restores == []


def test_restore_never_runs_when_the_safety_backup_is_refused(deployed, fake_gcp, capsys):
    nightly = fake_gcp.api("sqladmin").add_backup(PROJECT, "mlflow-db")
    fake_gcp.fail(status=403, method_id="sql.backupRuns.insert")
    code, _, err = run_cli(capsys, "backup", "restore", nightly["id"], "--yes")
    assert code == 1 and "NOT restored" in err
    assert fake_gcp.api("sqladmin").restores == []


def test_restore_asks_and_checks_the_id(deployed, fake_gcp, capsys):
    code, _, err = run_cli(capsys, "backup", "restore", "123")
    assert code == 1 and "backup 123 of mlflow-db does not exist" in err
    nightly = fake_gcp.api("sqladmin").add_backup(PROJECT, "mlflow-db")
    code, out, err = run_cli(capsys, "backup", "restore", nightly["id"])  # no --yes, no terminal
    assert code == 4 and "rerun with --yes" in err and "replaces every experiment" in out
    assert fake_gcp.mutating_requests() == []


def _seed_logs(fake):
    api = fake.api("logging")
    svc = {"type": "cloud_run_revision", "labels": {"service_name": "mlflow-tracking",
                                                    "revision_name": "mlflow-tracking-00001-abc"}}
    job = {"type": "cloud_run_job", "labels": {"job_name": "mlflow-tracking-migrate"}}
    other = {"type": "cloud_run_revision", "labels": {"service_name": "someone-else"}}
    api.add_entry(PROJECT, "server started", resource=svc, timestamp="2026-11-28T10:00:00Z")
    api.add_entry(PROJECT, "schema at head", resource=job, timestamp="2026-11-28T09:59:00Z")
    api.add_entry(PROJECT, "not ours", resource=other, timestamp="2026-11-28T10:00:30Z")
    api.add_entry(PROJECT, None, severity="ERROR", resource=svc, timestamp="2026-11-28T10:01:00Z",
                  jsonPayload={"message": "database unreachable:\nconnection refused"})
    api.add_entry(PROJECT, None, severity="INFO", resource=svc, timestamp="2026-11-28T10:02:00Z",
                  httpRequest={"requestMethod": "GET", "status": 200, "latency": "0.01s", "requestUrl": "/health"})
    api.add_entry(PROJECT, None, severity="NOTICE", timestamp="2026-11-28T10:03:00Z",
                  resource={"type": "cloudsql_database", "labels": {}},
                  logName=f"projects/{PROJECT}/logs/cloudaudit.googleapis.com%2Factivity",
                  protoPayload={"methodName": "cloudsql.instances.update",
                                "resourceName": f"projects/{PROJECT}/instances/mlflow-db",
                                "authenticationInfo": {"principalEmail": "ann@example.com"}})


def test_logs_service_and_job_one_line_each(deployed, fake_gcp, capsys):
    _seed_logs(fake_gcp)
    code, out, _ = run_cli(capsys, "logs")
    assert code == 0
    lines = out.splitlines()
    assert lines == [
        "2026-11-28 09:59:00 INFO     mlflow-tracking-migrate  schema at head",
        "2026-11-28 10:00:00 INFO     mlflow-tracking-00001-abc  server started",
        "2026-11-28 10:01:00 ERROR    mlflow-tracking-00001-abc  database unreachable: connection refused",
        "2026-11-28 10:02:00 INFO     mlflow-tracking-00001-abc  GET 200 0.01s /health",
    ]
    assert run_cli(capsys, "logs", "--severity", "error")[1].splitlines() == [lines[2]]
    assert run_cli(capsys, "logs", "--limit", "2")[1].splitlines() == lines[2:]
    lists = [r for r in fake_gcp.requests if r.method_id == "logging.entries.list"]
    assert 'resource.labels.service_name="mlflow-tracking"' in lists[-2].body["filter"]
    assert 'resource.labels.job_name="mlflow-tracking-migrate"' in lists[-1].body["filter"]
    assert fake_gcp.mutating_requests() == []


def test_logs_audit_and_since(deployed, fake_gcp, capsys):
    _seed_logs(fake_gcp)
    fake_gcp.audit_logs = True
    assert run_cli(capsys, "scale", "--max-instances", "5")[0] == 0
    fake_gcp.audit_logs = False
    code, out, _ = run_cli(capsys, "logs", "--audit", "--limit", "1000")
    lines = out.splitlines()
    assert (f"2026-11-28 10:03:00 NOTICE   cloudsql_database  ann@example.com cloudsql.instances.update "
            f"projects/{PROJECT}/instances/mlflow-db") in lines
    # scale patched the service: its audit entry is there, and only entries about our resources are
    assert any(" run.projects.locations.services.patch " in line for line in lines)
    assert not any("someone-else" in line for line in lines)
    assert all(" NOTICE " in line for line in lines)
    code, out, err = run_cli(capsys, "logs", "--since", "1h")  # seeded entries are older
    assert code == 0 and out == "" and "No log entries in the last 1h." in err
    code, _, err = run_cli(capsys, "logs", "--since", "yesterday")
    assert code == 2 and "since: 'yesterday' is not a duration" in err


def test_logs_follow_prints_new_entries_once(deployed, fake_gcp):
    from mlflow_gcp import config
    from mlflow_gcp.ops import logs
    from tests.integration.ops_support import ctx_for

    _seed_logs(fake_gcp)
    ctx = ctx_for(config.load("mlflow-gcp.toml", env={}))
    seen: list[str] = []

    def sleep(_):
        fake_gcp.api("logging").add_entry(
            PROJECT, f"tick {len(seen)}", timestamp=f"2026-11-28T11:00:0{len(seen) % 10}Z",
            resource={"type": "cloud_run_revision", "labels": {"service_name": "mlflow-tracking"}})

    logs.follow(ctx.clients, ctx.cfg, since=None, severity=None, audit=False, limit=100,
                emit=lambda e: seen.append(logs.message(e)), sleep=sleep, polls=3)
    assert seen[-2:] == ["tick 4", "tick 5"]
    assert len(seen) == len(set(seen))
