"""Cloud Run (v2): the server service, the migration job, and their IAM policies.

`get_service(clients, cfg)` is the stable way for other parts (client setup, status) to learn the
deployed URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow_gcp.errors import AlreadyExists, NotFound, OperationFailed
from mlflow_gcp.gcp import operations

# A new revision usually becomes ready in under a minute; a cold image pull can take several.
DEPLOY_TIMEOUT_SECONDS = 15 * 60
# `mlflow db upgrade` on a fresh or slightly old schema: seconds to a few minutes.
JOB_TIMEOUT_SECONDS = 30 * 60


@dataclass(frozen=True)
class Service:
    """What callers need to know about the deployed service."""

    name: str
    uri: str | None
    urls: tuple[str, ...] = ()
    image: str | None = None
    latest_ready_revision: str | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)


def location(clients, region: str) -> str:
    return f"projects/{clients.project}/locations/{region}"


def service_name(clients, region: str, service: str) -> str:
    return f"{location(clients, region)}/services/{service}"


def job_name(clients, region: str, job: str) -> str:
    return f"{location(clients, region)}/jobs/{job}"


def _services(clients):
    return clients.api("run").projects().locations().services()


def _jobs(clients):
    return clients.api("run").projects().locations().jobs()


def get_service_raw(clients, region: str, service: str) -> dict | None:
    return operations.read(
        clients, _services(clients).get(name=service_name(clients, region, service)), f"reading Cloud Run service {service}"
    )


def get_service(clients, cfg) -> Service | None:
    """The deployed service of `cfg` (uri, urls, image, revision), or None when not deployed."""
    raw = get_service_raw(clients, cfg.region, cfg.service.name)
    if raw is None:
        return None
    containers = (raw.get("template") or {}).get("containers") or [{}]
    return Service(
        name=cfg.service.name,
        uri=raw.get("uri"),
        urls=tuple(raw.get("urls") or ()),
        image=containers[0].get("image"),
        latest_ready_revision=(raw.get("latestReadyRevision") or "").rsplit("/", 1)[-1] or None,
        raw=raw,
    )


def create_service(clients, region: str, service: str, body: dict, progress=None) -> bool:
    return operations.change(
        clients, _services(clients).create(parent=location(clients, region), serviceId=service, body=body),
        f"creating Cloud Run service {service}", api="run", wait_for=f"Cloud Run service {service} to deploy",
        timeout=DEPLOY_TIMEOUT_SECONDS, progress=progress, tolerate=(AlreadyExists,),
    )


def update_service(clients, region: str, service: str, body: dict, progress=None) -> None:
    op = clients.execute(
        _services(clients).patch(name=service_name(clients, region, service), body=body),
        f"updating Cloud Run service {service}",
    )
    operations.wait(clients, op, api="run", what=f"Cloud Run service {service} to roll out",
                    timeout=DEPLOY_TIMEOUT_SECONDS, progress=progress)


def delete_service(clients, region: str, service: str, progress=None) -> bool:
    return operations.change(
        clients, _services(clients).delete(name=service_name(clients, region, service)),
        f"deleting Cloud Run service {service}", api="run", wait_for=f"Cloud Run service {service} deletion",
        timeout=600, progress=progress, tolerate=(NotFound,),
    )


def get_service_iam_policy(clients, region: str, service: str) -> dict:
    return clients.execute(
        _services(clients).getIamPolicy(resource=service_name(clients, region, service)),
        f"reading who may invoke {service}",
    )


def set_service_iam_policy(clients, region: str, service: str, policy: dict) -> dict:
    return clients.execute(
        _services(clients).setIamPolicy(resource=service_name(clients, region, service), body={"policy": policy}),
        f"updating who may invoke {service}",
    )


def get_job(clients, region: str, job: str) -> dict | None:
    return operations.read(clients, _jobs(clients).get(name=job_name(clients, region, job)), f"reading Cloud Run job {job}")


def last_succeeded_image(clients, region: str, job: str) -> str | None:
    """The image of the job's latest execution when it succeeded, else None (never ran, failed,
    or still running)."""
    current = get_job(clients, region, job) or {}
    latest = current.get("latestCreatedExecution") or {}
    if latest.get("completionStatus") != "EXECUTION_SUCCEEDED" or not latest.get("name"):
        return None
    execution = operations.read(
        clients, _jobs(clients).executions().get(name=latest["name"]), f"reading execution of job {job}"
    ) or {}
    containers = (execution.get("template") or {}).get("containers") or [{}]
    return containers[0].get("image")


def create_job(clients, region: str, job: str, body: dict, progress=None) -> bool:
    return operations.change(
        clients, _jobs(clients).create(parent=location(clients, region), jobId=job, body=body),
        f"creating Cloud Run job {job}", api="run", wait_for=f"Cloud Run job {job}", timeout=300,
        progress=progress, tolerate=(AlreadyExists,),
    )


def update_job(clients, region: str, job: str, body: dict, progress=None) -> None:
    op = clients.execute(
        _jobs(clients).patch(name=job_name(clients, region, job), body=body), f"updating Cloud Run job {job}"
    )
    operations.wait(clients, op, api="run", what=f"Cloud Run job {job}", timeout=300, progress=progress)


def run_job(clients, region: str, job: str, progress=None, args: list[str] | None = None) -> dict:
    """Execute the job (its container with other `args`, when given) and wait for it to finish;
    the Execution. OperationFailed if it failed."""
    # A job still being created or updated (by a run whose response was lost) cannot run yet.
    current = operations.wait_until(
        clients, lambda: get_job(clients, region, job), lambda j: j is None or not j.get("reconciling"),
        what=f"Cloud Run job {job} to be ready", timeout=300, progress=progress,
    )
    body = {"overrides": {"containerOverrides": [{"args": args}]}} if args else {}
    # Running a job is not idempotent: sent again after a lost answer, it runs twice. The last
    # execution read before sending tells a lost answer's execution apart.
    before = ((current or {}).get("latestCreatedExecution") or {}).get("name")
    what = f"job {job} to finish"
    op, execution = operations.send_once(
        clients, _jobs(clients).run(name=job_name(clients, region, job), body=body), f"starting Cloud Run job {job}",
        lambda: _execution_since(clients, region, job, before))
    if op is not None:
        done = operations.wait(clients, op, api="run", what=what, timeout=JOB_TIMEOUT_SECONDS, progress=progress)
        execution = done.get("response") or {}
    else:
        execution = operations.wait_until(
            clients, lambda: _get_execution(clients, execution["name"]), lambda e: bool(e.get("completionTime")),
            what=what, timeout=JOB_TIMEOUT_SECONDS, progress=progress)
    if execution.get("failedCount") or execution.get("cancelledCount"):
        raise OperationFailed(
            f"Cloud Run job {job} failed ({execution.get('failedCount', 0)} failed task(s))",
            hint=f"see its logs: {execution.get('logUri') or f'gcloud run jobs executions list --job {job}'}",
        )
    return execution


def _execution_since(clients, region: str, job: str, before: str | None) -> dict | None:
    """The job's latest execution when it is not `before` (one started since), else None."""
    latest = ((get_job(clients, region, job) or {}).get("latestCreatedExecution") or {}).get("name")
    return _get_execution(clients, latest) if latest and latest != before else None


def _get_execution(clients, name: str) -> dict:
    return clients.execute(_jobs(clients).executions().get(name=name), f"checking on execution {name.rsplit('/', 1)[-1]}")


def delete_job(clients, region: str, job: str, progress=None) -> bool:
    return operations.change(
        clients, _jobs(clients).delete(name=job_name(clients, region, job)), f"deleting Cloud Run job {job}",
        api="run", wait_for=f"Cloud Run job {job} deletion", timeout=600, progress=progress, tolerate=(NotFound,),
    )
