"""Cloud Scheduler as Google runs it (issue 14, items 8 and 9): jobs only in the regions that host
Cloud Scheduler, a retry policy so a resume that meets a running backup is not lost, a warning
when a pause is long enough to halt automated backups, and `destroy` taking the schedule along."""

from __future__ import annotations

import json

import googleapiclient.errors
import pytest

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401
from tests.integration.ops_support import PROJECT, REGION, deployed, run_cli, workdir  # noqa: F401

ACCOUNT = f"mlflow-gcp-scheduler@{PROJECT}.iam.gserviceaccount.com"
JOBS = ("mlflow-tracking-db-pause", "mlflow-tracking-db-resume")


@pytest.fixture
def scheduler_at_home(fake_gcp):
    """Cloud Scheduler in the deployment's region too, so a test of something else does not
    depend on the region fallback (tested on its own below)."""
    fake_gcp.api("cloudscheduler").locations[REGION] = "Paris"


def _job_names(fake) -> list[str]:
    return sorted(fake.state("cloudscheduler"))


def test_jobs_go_to_a_region_that_hosts_cloud_scheduler(deployed, fake_gcp, capsys):
    assert REGION not in fake_gcp.api("cloudscheduler").locations  # europe-west9: none, as at Google
    code, out, err = run_cli(capsys, "schedule", "set", "--pause", "22:00", "--resume", "06:00")
    assert code == 0, err
    assert (f"Cloud Scheduler does not run in {REGION}: the jobs go to europe-west1 (they call the "
            "global Cloud SQL Admin API, so nothing else changes)") in out
    assert _job_names(fake_gcp) == [f"projects/{PROJECT}/locations/europe-west1/jobs/{j}" for j in JOBS]
    assert any(r.method_id == "cloudscheduler.projects.locations.list" for r in fake_gcp.requests)
    code, out, _ = run_cli(capsys, "schedule", "show")
    assert "resume  daily 06:00" in out and "jobs in europe-west1" in out
    # A region Cloud Scheduler has keeps its jobs at home.
    code, out, err = run_cli(capsys, "schedule", "set", "--pause", "22:00", "--resume", "06:00",
                             "--set", "region=europe-west3")
    assert code == 0, err
    assert "does not run in" not in out
    assert f"projects/{PROJECT}/locations/europe-west3/jobs/mlflow-tracking-db-pause" in fake_gcp.state("cloudscheduler")


def test_a_job_in_a_region_without_cloud_scheduler_is_refused_by_the_fake(deployed, gcp_client):
    jobs = gcp_client("cloudscheduler", "v1").projects().locations().jobs()
    parent = f"projects/{PROJECT}/locations/{REGION}"
    body = {"name": f"{parent}/jobs/x", "schedule": "0 1 * * *", "httpTarget": {"uri": "https://example.com/"}}
    with pytest.raises(googleapiclient.errors.HttpError) as err:
        jobs.create(parent=parent, body=body).execute()
    assert err.value.status_code == 403 and "cloudscheduler.jobs.create" in str(err.value)


def test_jobs_retry_so_a_resume_that_meets_a_backup_is_not_lost(deployed, fake_gcp, capsys, scheduler_at_home):
    assert run_cli(capsys, "schedule", "set", "--pause", "22:00", "--resume", "06:00")[0] == 0
    for job in fake_gcp.state("cloudscheduler").values():
        retry = job["retryConfig"]
        assert retry["retryCount"] == 5  # Cloud Scheduler's maximum; 0 (its default) never retries
        assert (retry["minBackoffDuration"], retry["maxBackoffDuration"]) == ("60s", "900s")
    # A job made before (no retry policy) is brought up to date by the next `schedule set`.
    name = next(iter(fake_gcp.state("cloudscheduler")))
    fake_gcp.state("cloudscheduler")[name]["retryConfig"].pop("retryCount")
    fake_gcp.clear_log()
    code, out, _ = run_cli(capsys, "schedule", "set", "--pause", "22:00", "--resume", "06:00")
    assert code == 0 and "updated job" in out
    assert fake_gcp.state("cloudscheduler")[name]["retryConfig"]["retryCount"] == 5


def test_a_pause_over_36_hours_warns_that_backups_stop(deployed, fake_gcp, capsys, scheduler_at_home):
    code, out, err = run_cli(capsys, "schedule", "set", "--pause", "fri 20:00", "--resume", "mon 07:00")
    assert code == 0
    assert err.strip() == (
        "Warning: the database stays stopped up to 59 h in a row (from fri 20:00); Cloud SQL takes no "
        "automated backup of an instance stopped for more than 36 h (one is taken when it stops), so "
        "those days have no nightly backup: take one before a long pause (mlflow-gcp backup create) or "
        "resume within 36 h.")
    assert "59 h in a row" in run_cli(capsys, "schedule", "show")[1]
    assert "  note:    the database stays stopped up to 59 h in a row" in run_cli(capsys, "status")[1]
    # Weeknights only: 11 h at most, nothing to warn about.
    code, out, err = run_cli(capsys, "schedule", "set", "--pause", "mon-thu 20:00", "--resume", "tue-fri 07:00")
    assert code == 0 and err == ""


def test_plan_warns_that_the_suggested_schedule_stops_backups_over_the_weekend(workdir, fake_gcp, capsys):
    run_cli(capsys, "init", "--project", PROJECT)
    code, out, _ = run_cli(capsys, "plan")
    assert code == 0
    assert "  Note: with it the database stays stopped up to 59 h in a row (from fri 20:00); Cloud SQL " \
           "takes no automated backup" in out


def test_plan_warns_when_the_schedule_set_stops_backups(deployed, fake_gcp, capsys, scheduler_at_home):
    run_cli(capsys, "schedule", "set", "--pause", "fri 20:00", "--resume", "mon 07:00")
    code, out, _ = run_cli(capsys, "plan")
    assert code == 0
    assert "  Pause schedule: pause fri 20:00, resume mon 07:00 (UTC), about $2.69/month saved; see mlflow-gcp cost.\n" \
           "  Note: the database stays stopped up to 59 h in a row (from fri 20:00); Cloud SQL takes no automated " \
           "backup" in out


def test_destroy_takes_the_schedule_its_account_and_binding_along(deployed, fake_gcp, capsys, scheduler_at_home):
    assert run_cli(capsys, "schedule", "set", "--pause", "22:00", "--resume", "06:00")[0] == 0
    code, out, err = run_cli(capsys, "destroy", "--yes", "--confirm", PROJECT)
    assert code == 0, err
    for job in JOBS:
        assert f"deleted Cloud Scheduler job {job} ({REGION})" in out
    assert f"deleted project role binding roles/cloudsql.editor of {ACCOUNT}" in out
    assert f"deleted service account {ACCOUNT}" in out
    assert fake_gcp.state("cloudscheduler") == {} and ACCOUNT not in fake_gcp.state("iam")
    assert ACCOUNT not in json.dumps(fake_gcp.api("cloudresourcemanager").iam.policies)
    fake_gcp.clear_log()
    assert run_cli(capsys, "destroy", "--yes", "--confirm", PROJECT)[1].strip() == "Nothing to delete."
    assert fake_gcp.mutating_requests() == []
    # With the account gone there is no reason to read every region's jobs.
    assert not any(r.method_id == "cloudscheduler.projects.locations.jobs.list" for r in fake_gcp.requests)


def test_destroy_keeps_the_scheduler_account_another_deployment_uses(deployed, fake_gcp, capsys, scheduler_at_home):
    assert run_cli(capsys, "schedule", "set", "--pause", "22:00", "--resume", "06:00")[0] == 0
    # A second deployment in the project (service "other") with its own schedule.
    assert run_cli(capsys, "schedule", "set", "--pause", "23:00", "--resume", "05:00",
                   "--set", "service.name=other", "--set", "region=us-east1")[0] == 0
    code, out, err = run_cli(capsys, "destroy", "--yes", "--confirm", PROJECT)
    assert code == 0, err
    assert (f"Kept: service account {ACCOUNT} and its roles/cloudsql.editor binding: other schedules use it "
            "(other-db-pause, other-db-resume)") in out
    assert sorted(n.rsplit("/", 1)[-1] for n in fake_gcp.state("cloudscheduler")) == ["other-db-pause", "other-db-resume"]
    assert ACCOUNT in fake_gcp.state("iam")
