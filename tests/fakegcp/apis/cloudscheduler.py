"""Cloud Scheduler v1: locations list/get, jobs create/get/list/patch/delete/pause/resume/run
(for scheduled backups or pause/resume).

Cloud Scheduler runs in some regions only (europe-west9, Paris, is one it lacks): `locations`
lists the ones this fake hosts, a realistic subset, and a job in another region is refused as
Google refuses it (403 naming cloudscheduler.jobs.create "or the resource may not exist").
A retryConfig.retryCount above 5 or below 0 is refused, as the v1 reference says."""

from __future__ import annotations

import copy
import re

from ..core.api import ApiModule, Request, apply_mask, handles, now
from ..core.errors import GcpError, already_exists, failed_precondition, invalid_argument

_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")
# Regions that host Cloud Scheduler (the App Engine-era set; tests may edit `fake.api(...).locations`).
LOCATIONS = {
    "us-central1": "Iowa", "us-east1": "South Carolina", "us-east4": "Northern Virginia",
    "us-west1": "Oregon", "us-west2": "Los Angeles", "us-west3": "Salt Lake City",
    "us-west4": "Las Vegas", "northamerica-northeast1": "Montréal", "southamerica-east1": "São Paulo",
    "europe-west1": "Belgium", "europe-west2": "London", "europe-west3": "Frankfurt",
    "europe-west6": "Zürich", "europe-central2": "Warsaw", "asia-east1": "Taiwan",
    "asia-east2": "Hong Kong", "asia-northeast1": "Tokyo", "asia-northeast2": "Osaka",
    "asia-northeast3": "Seoul", "asia-south1": "Mumbai", "asia-southeast1": "Singapore",
    "asia-southeast2": "Jakarta", "australia-southeast1": "Sydney",
}
_CRON_FIELD = re.compile(r"[\d*/,\-A-Za-z]+")


class CloudScheduler(ApiModule):
    name = "cloudscheduler"
    versions = ("v1",)
    service = "cloudscheduler.googleapis.com"
    title = "Cloud Scheduler API"

    def reset(self) -> None:
        self.state: dict[str, dict] = {}  # job name -> Job
        self.runs: list[str] = []  # names of jobs run (by schedule or :run)
        self.locations: dict[str, str] = dict(LOCATIONS)  # region -> display name

    def _location(self, project: str, region: str) -> dict:
        return {"name": f"projects/{project}/locations/{region}", "locationId": region,
                "displayName": self.locations[region],
                "labels": {"cloud.googleapis.com/region": region}}

    @handles("cloudscheduler.projects.locations.list")
    def list_locations(self, req: Request) -> dict:
        project = req.get("name").split("/")[1]
        return {"locations": [self._location(project, r) for r in sorted(self.locations)]}

    @handles("cloudscheduler.projects.locations.get")
    def get_location(self, req: Request) -> dict:
        _, project, _, region = req.get("name").split("/")[:4]
        if region not in self.locations:
            raise GcpError(404, f"Location {req.get('name')} not found.", "NOT_FOUND")
        return self._location(project, region)

    def _check_location(self, parent: str) -> None:
        region = parent.split("/")[3]
        if region not in self.locations:
            raise GcpError(403, 'The principal (user or service account) lacks IAM permission '
                           f'"cloudscheduler.jobs.create" for the resource "{parent}" (or the '
                           'resource may not exist).', "PERMISSION_DENIED")

    def _job(self, name: str) -> dict:
        job = self.state.get(name)
        if job is None:
            raise GcpError(404, f"Job not found.", "NOT_FOUND")
        return job

    def _validate(self, job: dict) -> None:
        schedule = job.get("schedule") or ""
        fields = schedule.split()
        if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
            raise invalid_argument(f"Schedule has incorrect format: {schedule!r}.", field="job.schedule")
        targets = [t for t in ("httpTarget", "pubsubTarget", "appEngineHttpTarget") if job.get(t)]
        if len(targets) != 1:
            raise invalid_argument("Exactly one target is required.", field="job.target")
        http = job.get("httpTarget") or {}
        if http and not str(http.get("uri", "")).startswith(("http://", "https://")):
            raise invalid_argument("httpTarget.uri must be an http(s) URL.", field="job.http_target.uri")
        retries = (job.get("retryConfig") or {}).get("retryCount")
        if retries is not None and not 0 <= int(retries) <= 5:
            raise invalid_argument("retry_count must be between 0 and 5.", field="job.retry_config.retry_count")
        for token in ("oidcToken", "oauthToken"):
            email = (http.get(token) or {}).get("serviceAccountEmail")
            if email:
                self.fake.check_account_reference(email, f"job.http_target.{token}.service_account_email")

    @handles("cloudscheduler.projects.locations.jobs.create")
    def create(self, req: Request) -> dict:
        body = copy.deepcopy(req.body or {})
        parent = req.get("parent")
        self._check_location(parent)
        name = body.get("name") or ""
        if not name.startswith(parent + "/jobs/") or not _ID.fullmatch(name.rsplit("/", 1)[-1]):
            raise invalid_argument(f"Job name must be {parent}/jobs/JOB_ID.", field="job.name")
        if name in self.state:
            raise already_exists(f"Job {name}")
        self._validate(body)
        body.setdefault("timeZone", "Etc/UTC")
        body.setdefault("attemptDeadline", "180s")
        # Google fills what the job leaves out; retryCount stays absent (0: no retry).
        body["retryConfig"] = {"maxRetryDuration": "0s", "minBackoffDuration": "5s",
                               "maxBackoffDuration": "3600s", "maxDoublings": 5,
                               **(body.get("retryConfig") or {})}
        if body.get("httpTarget"):
            body["httpTarget"].setdefault("httpMethod", "POST")
        body.update({"state": "ENABLED", "userUpdateTime": now(), "scheduleTime": now()})
        self.state[name] = body
        return copy.deepcopy(body)

    @handles("cloudscheduler.projects.locations.jobs.get")
    def get(self, req: Request) -> dict:
        return copy.deepcopy(self._job(req.get("name")))

    @handles("cloudscheduler.projects.locations.jobs.list")
    def list(self, req: Request) -> dict:
        prefix = req.get("parent") + "/jobs/"
        items = [copy.deepcopy(j) for n, j in sorted(self.state.items()) if n.startswith(prefix)]
        return {"jobs": items} if items else {}

    @handles("cloudscheduler.projects.locations.jobs.patch")
    def patch(self, req: Request) -> dict:
        job = self._job(req.get("name"))
        new = copy.deepcopy(job)
        body = {k: v for k, v in (req.body or {}).items() if k not in ("name", "state", "userUpdateTime")}
        apply_mask(new, body, req.get("updateMask"))
        self._validate(new)
        new["userUpdateTime"] = now()
        self.state[job["name"]] = new
        return copy.deepcopy(new)

    @handles("cloudscheduler.projects.locations.jobs.delete")
    def delete(self, req: Request) -> dict:
        self._job(req.get("name"))
        del self.state[req.get("name")]
        return {}

    @handles("cloudscheduler.projects.locations.jobs.pause")
    def pause(self, req: Request) -> dict:
        job = self._job(req.get("name"))
        job["state"] = "PAUSED"
        job["userUpdateTime"] = now()
        return copy.deepcopy(job)

    @handles("cloudscheduler.projects.locations.jobs.resume")
    def resume(self, req: Request) -> dict:
        job = self._job(req.get("name"))
        job["state"] = "ENABLED"
        job["userUpdateTime"] = now()
        return copy.deepcopy(job)

    @handles("cloudscheduler.projects.locations.jobs.run")
    def run(self, req: Request) -> dict:
        job = self._job(req.get("name"))
        if job["state"] != "ENABLED" and job["state"] != "PAUSED":
            raise failed_precondition("Job is not runnable.")
        self.runs.append(job["name"])
        job["lastAttemptTime"] = now()
        return copy.deepcopy(job)
