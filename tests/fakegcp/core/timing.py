"""Time in the fake: a clock that moves only when a client waits on it (or a test advances it),
how long Google's long-running operations take, and how long Google takes to make a change
visible everywhere (an API just enabled, a service account just created).

Waiting costs no real time: a client under emulation sleeps by advancing this clock
(`POST /_fake/clock:sleep`, see FakeGcp.handle), so a 10-minute Cloud SQL creation is a few
dozen polls that each move the clock, and the timeouts, backoffs and progress lines the client
shows are the ones a user would see.
"""

from __future__ import annotations

import re
import threading
import time

# Google: "If you enabled this API recently, wait a few minutes for the action to propagate to
# our systems and retry." Two minutes is within what users report (up to ~5).
API_PROPAGATION_SECONDS = 120.0
# Google (IAM docs, "eventual consistency"): a new service account may be unusable in policies
# and by other APIs for "60 seconds or more".
ACCOUNT_PROPAGATION_SECONDS = 75.0

# (api, regex searched in the operation's "<resource> <kind>" target, seconds): first match wins.
# Figures are typical ones from Google's docs and what users report.
DURATIONS: tuple[tuple[str, str, float], ...] = (
    ("sqladmin", r" CREATE$", 600.0),  # "creating an instance takes 5 to 15 minutes"
    ("sqladmin", r" (UPDATE|RESTART)$", 120.0),  # a tier change restarts the instance
    ("sqladmin", r" (RESTORE_VOLUME)$", 300.0),
    ("sqladmin", r" (DELETE|BACKUP_VOLUME|BACKUP)$", 90.0),
    ("sqladmin", r"", 15.0),  # databases, users, deleting a backup
    ("cloudbuild", r"", 240.0),  # pip installing MLflow into an image: 3-6 minutes
    ("run", r" Execution$", 60.0),  # a job execution: task start + `mlflow db upgrade`
    ("run", r"", 30.0),  # a service revision or a job becoming ready
    ("serviceusage", r"", 20.0),
    ("artifactregistry", r"", 5.0),
)


class FakeClock:
    """Seconds since the epoch, starting at the real time, moving only when advanced."""

    def __init__(self, start: float | None = None):
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += max(0.0, float(seconds))
            return self._now


def duration(api: str, target: str, table=DURATIONS) -> float:
    for name, pattern, seconds in table:
        if name == api and re.search(pattern, target):
            return seconds
    return 0.0
