"""Cloud Scheduler (v1): the jobs that pause and resume the database on a timetable."""

from __future__ import annotations

from mlflow_gcp.errors import NotFound


def location(clients, region: str) -> str:
    return f"projects/{clients.project}/locations/{region}"


def job_name(clients, region: str, job_id: str) -> str:
    return f"{location(clients, region)}/jobs/{job_id}"


def _jobs(clients):
    return clients.api("cloudscheduler").projects().locations().jobs()


def list_locations(clients) -> list[str]:
    """The regions that host Cloud Scheduler for this project (not every Google Cloud region)."""
    api = clients.api("cloudscheduler").projects().locations()
    out: list[str] = []
    token = None
    while True:
        page = clients.execute(api.list(name=f"projects/{clients.project}", pageToken=token),
                               "listing Cloud Scheduler locations")
        out += [loc.get("locationId") for loc in page.get("locations") or [] if loc.get("locationId")]
        token = page.get("nextPageToken")
        if not token:
            return out


def list_jobs(clients, region: str) -> list[dict]:
    out: list[dict] = []
    token = None
    while True:
        page = clients.execute(_jobs(clients).list(parent=location(clients, region), pageToken=token),
                               f"listing Cloud Scheduler jobs in {region}")
        out += page.get("jobs") or []
        token = page.get("nextPageToken")
        if not token:
            return out


def get_job(clients, region: str, job_id: str) -> dict | None:
    try:
        return clients.execute(_jobs(clients).get(name=job_name(clients, region, job_id)),
                               f"reading Cloud Scheduler job {job_id}")
    except NotFound:
        return None


def create_job(clients, region: str, body: dict) -> dict:
    return clients.execute(_jobs(clients).create(parent=location(clients, region), body=body),
                           f"creating Cloud Scheduler job {body['name'].rsplit('/', 1)[-1]}")


def update_job(clients, body: dict, fields: str) -> dict:
    return clients.execute(_jobs(clients).patch(name=body["name"], updateMask=fields, body=body),
                           f"updating Cloud Scheduler job {body['name'].rsplit('/', 1)[-1]}")


def delete_job(clients, region: str, job_id: str) -> bool:
    try:
        clients.execute(_jobs(clients).delete(name=job_name(clients, region, job_id)),
                        f"deleting Cloud Scheduler job {job_id}")
        return True
    except NotFound:
        return False
