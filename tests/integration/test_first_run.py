"""What the first real run meets on Google, command by command: APIs enabled minutes ago that still
answer SERVICE_DISABLED, service accounts unknown for a minute or more, user credentials without a
quota project, operations that take minutes, and lost answers to calls that must not run twice.
The fake keeps all of that on by default (tests/fakegcp/core/timing.py)."""

from __future__ import annotations

from mlflow_gcp.cli import main as cli_main

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401
from tests.integration.ops_support import MEMBER, PROJECT, deployed, run_cli, workdir  # noqa: F401

FIX_QUOTA = f"gcloud auth application-default set-quota-project {PROJECT}"


def _up(capsys, *extra: str) -> tuple[int, str, str]:
    assert cli_main.main(["init", "--project", PROJECT, "--set", f"access.members={MEMBER}", *extra]) == 0
    capsys.readouterr()
    return run_cli(capsys, "up", "--yes")


# ------------------------------------------------------------------ 1. API enablement propagates slowly


def test_up_in_a_new_project_waits_for_the_apis_it_enabled(fake_gcp, workdir, capsys):
    fake_gcp.services_enabled_by_default = False  # a brand-new project: every API off
    code, out, err = _up(capsys)
    assert code == 0, out + err
    assert "enable " in out and "iam.googleapis.com" in out
    assert "waiting for iam.googleapis.com, enabled recently, to answer (Google takes a few minutes)" in out
    assert fake_gcp.state("run"), "the service was deployed"


def test_every_command_waits_for_an_api_enabled_a_moment_ago(deployed, fake_gcp, capsys):
    for api in ("run", "cloudresourcemanager", "iam", "sqladmin", "serviceusage"):
        fake_gcp.enable_api(api, PROJECT, just_now=True)
    code, out, err = run_cli(capsys, "access", "grant", "user:bob@example.com")
    assert code == 0, out + err
    assert "waiting for run.googleapis.com, enabled recently, to answer" in err
    fake_gcp.enable_api("sqladmin", PROJECT, just_now=True)
    code, out, err = run_cli(capsys, "doctor")
    assert "waiting for sqladmin.googleapis.com, enabled recently" in err
    assert "not enabled" not in out


def test_an_api_that_stays_disabled_is_still_reported_at_once(deployed, fake_gcp, capsys):
    fake_gcp.disable_api("run", project=PROJECT)
    code, out, err = run_cli(capsys, "access", "grant", "user:bob@example.com")
    assert code == 1
    assert "the run.googleapis.com API is not enabled in project acme-ml-prod" in err
    assert "waiting" not in err


# ------------------------------------------------------------------ 2. quota project


def test_user_credentials_without_quota_project_get_the_fix_not_an_enable(fake_gcp, workdir, capsys):
    fake_gcp.user_credentials_without_quota_project()
    code, out, err = _up(capsys)
    assert code == 1
    assert "Google billed project 764086051850 for the call, not acme-ml-prod" in err
    assert FIX_QUOTA in err
    assert not [r for r in fake_gcp.requests if r.method_id and "enable" in r.method_id.lower()], \
        "never enable APIs in the project Google billed (gcloud's own)"


def test_doctor_checks_the_quota_project(deployed, fake_gcp, capsys):
    code, out, _ = run_cli(capsys, "doctor")
    assert "PASS  quota project: API calls are billed to acme-ml-prod" in out
    fake_gcp.user_credentials_without_quota_project()
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 1
    assert "FAIL  quota project: Google bills project 764086051850, not acme-ml-prod, for Service Usage calls" in out
    assert f"fix: {FIX_QUOTA}" in out


# ------------------------------------------------------------------ 3. new service accounts propagate slowly


def test_access_create_sa_waits_for_its_new_account(deployed, fake_gcp, capsys):
    code, out, err = run_cli(capsys, "access", "create-sa", "ci-jobs", "--impersonator", "user:you@example.com")
    assert code == 0, out + err
    assert f"waiting for the new service account ci-jobs@{PROJECT}.iam.gserviceaccount.com to be known" in err
    assert "create service account" in out or "ci-jobs" in out


def test_schedule_set_waits_for_its_new_account(deployed, fake_gcp, capsys):
    code, out, err = run_cli(capsys, "schedule", "set", "--pause", "22:00", "--resume", "06:00")
    assert code == 0, out + err
    assert "to be known (Google takes a minute or more)" in out + err
    assert len(fake_gcp.state("cloudscheduler")) == 2


def test_up_waits_for_a_slow_account_longer_than_half_a_minute(fake_gcp, workdir, capsys):
    fake_gcp.realistic_durations = False  # no Cloud SQL creation to hide the account's delay behind
    fake_gcp.account_propagation_seconds = 150  # "60 seconds or more": past the 30 s up used to allow
    code, out, err = _up(capsys)
    assert code == 0, out + err
    assert "waiting for the new service account mlflow-server@" in out


# ------------------------------------------------------------------ 6. long operations take real time


def test_up_shows_the_minutes_cloud_sql_and_the_build_take(fake_gcp, workdir, capsys):
    code, out, err = _up(capsys)
    assert code == 0, out + err
    lines = out.splitlines()
    sql = lines.index(next(line for line in lines if "create Cloud SQL instance mlflow-db" in line))
    waits = [line for line in lines[sql + 1:] if "waiting for Cloud SQL instance mlflow-db to be created" in line]
    assert len(waits) >= 5, "a line every 15 s or so of a 10-minute wait"
    done = next(line for line in lines[sql + 1:] if line.startswith("  done in"))
    assert 600 <= int(done.split()[2].rstrip("s")) <= 700, done
    assert any("waiting for the image build on Cloud Build (" in line for line in lines)


def test_a_cloud_sql_creation_past_the_timeout_says_what_and_how_to_resume(fake_gcp, workdir, capsys):
    fake_gcp.set_duration("sqladmin", r" CREATE$", 2 * 3600)
    code, out, err = _up(capsys)
    assert code == 1
    assert "timed out after" in err and "waiting for Cloud SQL instance mlflow-db to be created" in err
    assert "rerun the same command to pick up from there" in err
    fake_gcp.advance(3600)
    code, out, err = run_cli(capsys, "up", "--yes")
    assert code == 0, out + err


# ------------------------------------------------------------------ 7. calls that must not run twice


def test_a_lost_answer_to_builds_create_does_not_build_twice(fake_gcp, workdir, capsys):
    fake_gcp.fail(503, method_id="cloudbuild.projects.builds.create", after_apply=True)
    code, out, err = _up(capsys)
    assert code == 0, out + err
    assert len(fake_gcp.state("cloudbuild")) == 1


def test_a_lost_answer_to_jobs_run_does_not_migrate_twice(fake_gcp, workdir, capsys):
    fake_gcp.fail(503, method_id="run.projects.locations.jobs.run", after_apply=True)
    code, out, err = _up(capsys)
    assert code == 0, out + err
    assert len(fake_gcp.api("run").executions) == 1


def test_a_refused_jobs_run_is_sent_again(fake_gcp, workdir, capsys):
    fake_gcp.fail(503, method_id="run.projects.locations.jobs.run")  # refused: nothing ran
    code, out, err = _up(capsys)
    assert code == 0, out + err
    assert len(fake_gcp.api("run").executions) == 1
    assert [r.status for r in fake_gcp.requests if r.method_id == "run.projects.locations.jobs.run"] == [503, 200]


# ------------------------------------------------------------------ the waits end


def test_an_api_that_never_becomes_usable_is_reported_after_five_minutes(deployed, fake_gcp, capsys):
    fake_gcp.api_propagation_seconds = 3600
    fake_gcp.enable_api("run", PROJECT, just_now=True)
    start = fake_gcp.now()
    code, out, err = run_cli(capsys, "access", "grant", "user:bob@example.com")
    assert code == 1
    assert "enabled, but Google has not finished enabling it" in err and "still failing after" in err
    assert 240 <= fake_gcp.now() - start <= 330, "about the 5 minutes Google asks for, not forever"


def test_an_account_that_never_becomes_known_is_reported_after_three_minutes(deployed, fake_gcp, capsys):
    fake_gcp.account_propagation_seconds = 3600
    start = fake_gcp.now()
    code, out, err = run_cli(capsys, "access", "create-sa", "ci-jobs")
    assert code == 1
    assert "the account exists; Google has not made it known everywhere yet" in err
    assert 150 <= fake_gcp.now() - start <= 200
