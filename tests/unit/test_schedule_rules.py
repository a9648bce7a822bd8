"""The pure parts of the schedule rules: where the jobs go, and the longest pause of a timetable."""

from __future__ import annotations

import pytest

from mlflow_gcp.ops import schedule
from tests.fakegcp.apis.cloudscheduler import LOCATIONS

HOSTS = sorted(LOCATIONS)


@pytest.mark.parametrize("region, where", [
    ("europe-west3", "europe-west3"),       # hosted: stays
    ("europe-west9", "europe-west1"),       # same family first
    ("europe-southwest1", "europe-central2"),  # then the continent (natural order)
    ("us-south1", "us-central1"),
    ("me-central2", "us-central1"),         # nothing near: the fallback
    ("asia-southeast3", "asia-southeast1"),
])
def test_jobs_go_to_the_nearest_region_that_hosts_cloud_scheduler(region, where):
    assert schedule.pick_region(region, HOSTS) == where


def test_natural_order_puts_west2_before_west10():
    assert schedule.pick_region("europe-west12", ["europe-west10", "europe-west2"]) == "europe-west2"


@pytest.mark.parametrize("pause_at, resume_at, hours, start", [
    ("mon-fri 20:00", "mon-fri 07:00", 59, "fri 20:00"),
    ("sun 22:00", "mon 06:00", 8, "sun 22:00"),      # over the week's end
    ("fri 20:00", "mon 07:00", 59, "fri 20:00"),
    ("22:00", "06:00", 8, "mon 22:00"),
])
def test_longest_pause(pause_at, resume_at, hours, start):
    got, minute = schedule.longest_pause(schedule.parse_when(pause_at, "pause"), schedule.parse_when(resume_at, "resume"))
    assert got == hours
    assert f"{schedule.DAYS[minute // 1440].lower()} {minute % 1440 // 60:02d}:{minute % 60:02d}" == start
    note = schedule.backups_note(schedule.parse_when(pause_at, "pause"), schedule.parse_when(resume_at, "resume"))
    assert (note is not None) == (hours > 36)
