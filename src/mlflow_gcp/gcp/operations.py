"""The one waiter for long-running operations of every API.

Two shapes exist: Cloud SQL's own Operation (status PENDING/RUNNING/DONE, error.errors[]) and
google.longrunning.Operation (done, error{code,message}, response) used by Cloud Run, Artifact
Registry, Service Usage and Cloud Build. `wait()` polls either, reports progress (what is being
waited on and for how long), gives up after a timeout and raises OperationFailed with a readable
name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mlflow_gcp.errors import OperationFailed, RateLimited, Unavailable
from mlflow_gcp.gcp.errors import RetryPolicy

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

# Poll interval grows to this; Cloud SQL creation takes 5-15 minutes, so ten seconds loses little.
MAX_POLL_INTERVAL_SECONDS = 10.0
# Waits allowed half an hour or more (a Cloud SQL creation, a build) poll up to every 30 s: a
# minute in sixty of the timeout, so a long wait makes a few dozen calls, not hundreds.
LONG_POLL_INTERVAL_SECONDS = 30.0


def _max_interval(timeout: float) -> float:
    return min(LONG_POLL_INTERVAL_SECONDS, max(MAX_POLL_INTERVAL_SECONDS, timeout / 60))


def _is_done(op: dict, api: str) -> bool:
    if api == "sqladmin":
        return op.get("status") == "DONE"
    return bool(op.get("done"))


def _error(op: dict, api: str) -> str | None:
    err = op.get("error")
    if not err:
        return None
    if api == "sqladmin":
        items = err.get("errors") or []
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in items) or str(err)
    return f"{err.get('message') or 'failed'} (code {err.get('code')})"


def _poll_request(clients, op: dict, api: str):
    name = op["name"]
    if api == "sqladmin":
        return clients.api("sqladmin").operations().get(project=clients.project, operation=name)
    if api == "run":
        return clients.api("run").projects().locations().operations().get(name=name)
    if api == "artifactregistry":
        return clients.api("artifactregistry").projects().locations().operations().get(name=name)
    if api == "serviceusage":
        return clients.api("serviceusage").operations().get(name=name)
    if api == "cloudbuild":
        return clients.api("cloudbuild").operations().get(name=name)
    raise ValueError(f"no waiter for {api} operations")


def wait(
    clients,
    op: dict,
    *,
    api: str,
    what: str,
    timeout: float,
    progress: Progress | None = None,
) -> dict:
    """Poll `op` until done; the finished operation (its `response` for longrunning ones)."""
    start = clients.clock()
    interval = clients.poll_interval
    log.debug("waiting for %s: operation %s", what, op.get("name"))
    while not _is_done(op, api):
        elapsed = clients.clock() - start
        if elapsed > timeout:
            raise OperationFailed(
                f"timed out after {elapsed:.0f}s waiting for {what} (operation {op.get('name')})",
                hint="it may still finish; rerun the same command to pick up from there",
            )
        if progress:
            progress(what, elapsed)
        clients.sleep(interval)
        interval = min(_max_interval(timeout), interval * 1.5)
        op = clients.execute(_poll_request(clients, op, api), f"checking on {what}")
    message = _error(op, api)
    if message:
        raise OperationFailed(f"{what} failed: {message} (operation {op.get('name')})")
    return op


def wait_until(clients, read: Callable[[], Any], ready: Callable[[Any], bool], *, what: str, timeout: float,
               progress: Progress | None = None) -> Any:
    """Poll `read()` until `ready(value)`: for a resource another run (or Google) is still busy
    with, whose operation we do not hold (e.g. a create whose response was lost)."""
    start = clients.clock()
    interval = clients.poll_interval
    value = read()
    while not ready(value):
        elapsed = clients.clock() - start
        if elapsed > timeout:
            raise OperationFailed(f"timed out after {elapsed:.0f}s waiting for {what}",
                                  hint="rerun the same command later")
        if progress:
            progress(what, elapsed)
        clients.sleep(interval)
        interval = min(_max_interval(timeout), max(interval, 0.0) * 1.5)
        value = read()
    return value


def read(clients, request, what: str) -> dict | None:
    """A get that treats NotFound as 'not there' (None), the read half of every ensure_*."""
    from mlflow_gcp.errors import NotFound

    try:
        return clients.execute(request, what)
    except NotFound:
        return None


def change(clients, request, what: str, *, api: str, wait_for: str, timeout: float, progress=None,
           retry=None, tolerate: tuple[type[Exception], ...] = ()) -> bool:
    """Send one mutating call and wait for its operation.

    False when the call raised one of `tolerate` (AlreadyExists for a create another run already
    made, NotFound for a delete already done): the idempotent outcome, nothing to wait for.
    """
    try:
        op = clients.execute(request, what, retry=retry)
    except tolerate:
        return False
    wait(clients, op, api=api, what=wait_for, timeout=timeout, progress=progress)
    return True


# A refusal (429) means the call did nothing, so it is sent again as any call; an answer that may
# have been lost (5xx, no answer at all) is not, see send_once.
RESEND_REFUSED = RetryPolicy(retryable=(RateLimited,))


def send_once(clients, request, what: str, find: Callable[[], Any], *,
              policy: RetryPolicy | None = None) -> tuple[dict | None, Any]:
    """Send a call that must not take effect twice (starting a build, running a job): after an
    answer that may have been lost, `find()` looks for what the call would have made (marked
    before sending) and only when it finds nothing is the call sent again.

    Returns (response, None) when an answer came, or (None, found) when the call had taken effect
    although its answer was lost. `policy` (default: the clients') bounds the resends."""
    policy = policy or clients.retry
    start = clients.clock()
    delays = policy.delays()
    while True:
        try:
            return clients.execute(request, what, retry=RESEND_REFUSED), None
        except Unavailable as err:
            found = find()
            if found is not None:
                log.debug("%s: the answer was lost but the call took effect: %s", what, err)
                return None, found
            delay = next(delays)
            if clients.clock() - start + delay > policy.budget_seconds:
                raise
            log.debug("%s: no answer and nothing made; sending again in %.1fs", what, delay)
            clients.sleep(delay)
