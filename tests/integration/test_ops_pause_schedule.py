"""status, pause/resume, schedule, scale and cost through the CLI, against the fake of Google's APIs."""

from __future__ import annotations

import base64
import json

from mlflow_gcp import config

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server  # noqa: F401
from tests.integration.ops_support import (INSTANCE_KEY, PROJECT, REGION, SERVICE, deployed, run_cli,  # noqa: F401
                                           workdir, writes)


def test_status_shows_the_deployment(deployed, fake_gcp, capsys):
    fake_gcp.api("sqladmin").add_backup(PROJECT, "mlflow-db")
    code, out, _ = run_cli(capsys, "status")
    assert code == 0
    assert "URL:       https://mlflow-tracking-" in out
    assert f"MLflow:    {config.MLFLOW_VERSION}" in out
    assert "Instances: 0..10" in out
    assert "Database:  mlflow-db RUNNABLE, db-f1-micro, POSTGRES_15" in out
    assert "(AUTOMATED)" in out
    assert "move objects under the whole bucket older than 90 days to NEARLINE" in out
    assert "Connections: at most 25 of 25 (10 instances x 2 + 5 reserved)" in out
    assert "health check skipped" in out  # no real URL under emulation, said rather than failed
    assert fake_gcp.mutating_requests() == []


def test_pause_then_status_shows_paused_and_resume_starts_it(deployed, fake_gcp, capsys):
    code, out, _ = run_cli(capsys, "pause", "--yes")
    assert code == 0 and out.strip().endswith("MLflow answers errors until `mlflow-gcp resume`")
    assert fake_gcp.state("sqladmin")[INSTANCE_KEY]["settings"]["activationPolicy"] == "NEVER"
    patches = [r for r in fake_gcp.requests if r.method_id == "sql.instances.patch"]
    assert [p.body for p in patches] == [{"settings": {"activationPolicy": "NEVER"}}]

    code, out, _ = run_cli(capsys, "status", "--json")
    data = json.loads(out)
    assert data["database"]["paused"] is True and data["database"]["state"] == "PAUSED"
    code, out, _ = run_cli(capsys, "status")
    assert "Database:  mlflow-db PAUSED (mlflow-gcp resume)" in out

    fake_gcp.clear_log()
    assert run_cli(capsys, "pause", "--yes")[1].strip() == "mlflow-db is already paused"
    assert fake_gcp.mutating_requests() == []

    code, out, _ = run_cli(capsys, "resume")
    assert code == 0 and "resumed" in out
    assert fake_gcp.state("sqladmin")[INSTANCE_KEY]["settings"]["activationPolicy"] == "ALWAYS"


def test_pause_off_a_terminal_needs_yes(deployed, fake_gcp, capsys):
    code, _, err = run_cli(capsys, "pause")
    assert code == 4 and "rerun with --yes" in err
    assert fake_gcp.mutating_requests() == []


def test_work_that_needs_the_database_is_refused_while_paused(deployed, fake_gcp, capsys):
    run_cli(capsys, "pause", "--yes")
    fake_gcp.clear_log()
    nightly = fake_gcp.api("sqladmin").add_backup(PROJECT, "mlflow-db")
    fake_gcp.clear_log()
    for args in (["backup", "create"], ["rotate-password", "--yes"], ["backup", "restore", nightly["id"], "--yes"],
                 ["upgrade", "--mlflow-version", "3.17.3", "--yes"]):
        code, _, err = run_cli(capsys, *args)
        assert code == 1 and "is paused" in err and "mlflow-gcp resume" in err, args
    assert fake_gcp.mutating_requests() == []


def test_schedule_set_show_clear(deployed, fake_gcp, capsys):
    code, out, _ = run_cli(capsys, "schedule", "set", "--pause", "fri 20:00", "--resume", "mon 07:00",
                           "--time-zone", "Europe/Paris")
    assert code == 0, out
    assert "59 h a week" in out
    jobs = fake_gcp.state("cloudscheduler")
    # Cloud Scheduler has no europe-west9 (the deployment's region): the nearest of its family.
    pause = jobs[f"projects/{PROJECT}/locations/europe-west1/jobs/mlflow-tracking-db-pause"]
    resume = jobs[f"projects/{PROJECT}/locations/europe-west1/jobs/mlflow-tracking-db-resume"]
    assert (pause["schedule"], pause["timeZone"]) == ("0 20 * * 5", "Europe/Paris")
    assert resume["schedule"] == "0 7 * * 1"
    target = pause["httpTarget"]
    assert target["uri"] == f"https://sqladmin.googleapis.com/v1/projects/{PROJECT}/instances/mlflow-db"
    assert target["httpMethod"] == "PATCH"
    assert json.loads(base64.b64decode(target["body"])) == {"settings": {"activationPolicy": "NEVER"}}
    assert json.loads(base64.b64decode(resume["httpTarget"]["body"])) == {"settings": {"activationPolicy": "ALWAYS"}}
    email = f"mlflow-gcp-scheduler@{PROJECT}.iam.gserviceaccount.com"
    assert target["oauthToken"]["serviceAccountEmail"] == email
    assert email in fake_gcp.state("iam")
    policy = fake_gcp.api("cloudresourcemanager").iam.policies[PROJECT]
    assert any(b["role"] == "roles/cloudsql.editor" and f"serviceAccount:{email}" in b["members"]
               for b in policy["bindings"])

    fake_gcp.clear_log()
    code, out, _ = run_cli(capsys, "schedule", "set", "--pause", "fri 20:00", "--resume", "mon 07:00",
                           "--time-zone", "Europe/Paris")
    assert out.startswith("No changes") and fake_gcp.mutating_requests() == []

    code, out, _ = run_cli(capsys, "schedule", "show")
    assert "pause   fri 20:00 (Europe/Paris, cron '0 20 * * 5', ENABLED)" in out
    assert "paused 59 h a week" in out

    code, out, _ = run_cli(capsys, "cost")
    assert "your schedule (pause fri 20:00, resume mon 07:00)" in out
    code, out, _ = run_cli(capsys, "pause", "--yes")
    assert "Note: the schedule starts it again mon 07:00 (Europe/Paris)." in out
    run_cli(capsys, "resume")

    run_cli(capsys, "schedule", "set", "--pause", "mon-fri 19:00", "--resume", "mon-fri 08:00")
    assert fake_gcp.state("cloudscheduler")[pause["name"]]["schedule"] == "0 19 * * 1,2,3,4,5"
    assert writes(fake_gcp, "cloudscheduler") == ["cloudscheduler.projects.locations.jobs.patch"] * 2

    code, out, _ = run_cli(capsys, "schedule", "clear")
    assert code == 0 and fake_gcp.state("cloudscheduler") == {}
    assert "No schedule" in run_cli(capsys, "schedule", "show")[1]


def test_schedule_rejects_bad_input_before_any_call(deployed, fake_gcp, capsys):
    for args, needle in ((["--pause", "friday at 8", "--resume", "mon 07:00"], "pause: "),
                         (["--pause", "fri 25:00", "--resume", "mon 07:00"], "no such time"),
                         (["--pause", "fri 20:00", "--resume", "mon 07:00", "--time-zone", "Mars/Base"], "time zone")):
        code, _, err = run_cli(capsys, "schedule", "set", *args)
        assert code == 2 and needle in err, (args, err)
    assert fake_gcp.requests == []


def test_cost_says_what_pausing_saves(workdir, fake_gcp, capsys):
    run_cli(capsys, "init", "--project", PROJECT)
    code, out, _ = run_cli(capsys, "cost")
    assert code == 0
    assert "Estimated monthly cost" in out and "Cloud SQL instance" in out
    assert "Pausing (mlflow-gcp pause) saves $0.0105 per paused hour" in out
    assert "59 h/week  saves about $2.69/month" in out  # 59 h x 730/168 weeks x $0.0105
    data = json.loads(run_cli(capsys, "cost", "--json")[1])
    assert data["pausing"]["examples"][1]["paused_hours_per_week"] == 103.0


def test_scale_checks_the_budget_and_names_a_tier(deployed, fake_gcp, capsys):
    code, _, err = run_cli(capsys, "scale", "--max-instances", "20")
    assert code == 2
    assert "db-g1-small would fit" in err
    assert fake_gcp.mutating_requests() == []

    code, out, _ = run_cli(capsys, "scale", "--max-instances", "4", "--min-instances", "1")
    assert code == 0 and "Scaled 1..4 instances, 5 database connections each." in out
    svc = fake_gcp.state("run")[SERVICE]
    assert svc["template"]["scaling"] == {"minInstanceCount": 1, "maxInstanceCount": 4}
    env = {e["name"]: e.get("value") for e in svc["template"]["containers"][0]["env"]}
    assert env["DB_CONNECTIONS"] == "5"
    assert writes(fake_gcp) == ["run.projects.locations.services.patch"]
    cfg = config.load("mlflow-gcp.toml", env={})
    assert (cfg.service.min_instances, cfg.service.max_instances) == (1, 4)

    # The next `up` agrees with what scale did.
    fake_gcp.clear_log()
    assert run_cli(capsys, "up", "--yes")[1].startswith("No changes.")


def test_before_up_every_command_says_what_is_missing(workdir, fake_gcp, capsys):
    run_cli(capsys, "init", "--project", PROJECT)
    for args in (["backup", "list"], ["pause", "--yes"], ["scale", "--max-instances", "3"], ["lifecycle", "show"],
                 ["upgrade", "--mlflow-version", "3.17.3", "--yes"], ["rotate-password", "--yes"]):
        code, _, err = run_cli(capsys, *args)
        assert code == 1 and err.startswith("Error: ") and err.strip().endswith("(run `mlflow-gcp up` first)"), args
    code, out, _ = run_cli(capsys, "status")
    assert code == 0 and "Service:   mlflow-tracking is not deployed (mlflow-gcp up)" in out
    assert fake_gcp.mutating_requests() == []


def test_schedule_enables_the_scheduler_api_when_needed(deployed, fake_gcp, capsys):
    fake_gcp.disable_api("cloudscheduler")
    code, out, err = run_cli(capsys, "schedule", "set", "--pause", "22:00", "--resume", "06:00")
    assert code == 0, err
    assert "enabled cloudscheduler.googleapis.com" in out and "56 h a week" in out
    assert len(fake_gcp.state("cloudscheduler")) == 2


def test_plan_says_what_a_schedule_would_save(workdir, fake_gcp, capsys):
    run_cli(capsys, "init", "--project", PROJECT)
    code, out, _ = run_cli(capsys, "plan")
    assert code == 0
    assert "A pause schedule (mlflow-gcp schedule set --pause 'mon-fri 20:00' --resume 'mon-fri 07:00') " \
           "would save about $4.70/month" in out
