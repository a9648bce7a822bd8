"""The one table from Google's HTTP errors to ours, fed with Google's real error payload shapes."""

from __future__ import annotations

import json

import httplib2
import pytest
from googleapiclient.errors import HttpError

from mlflow_gcp.errors import (
    AlreadyExists, ApiDisabled, Conflict, GcpError, NotFound, PermissionDenied, RateLimited, Unavailable,
)
from mlflow_gcp.gcp import errors as gerrors

PROJECT = "acme-ml-prod"


def http_error(status: int, error: dict, uri="https://sqladmin.googleapis.com/v1/projects/p/instances") -> HttpError:
    resp = httplib2.Response({"status": status})
    return HttpError(resp, json.dumps({"error": {"code": status, **error}}).encode(), uri=uri)


def translate(err: HttpError):
    return gerrors.translate(err, "creating Cloud SQL instance mlflow-db", project=PROJECT, uri=err.uri)


def test_service_disabled_names_the_api_and_the_command():
    err = translate(http_error(403, {
        "message": "Cloud SQL Admin API has not been used in project 123 before or it is disabled.",
        "status": "PERMISSION_DENIED",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED",
                     "domain": "googleapis.com", "metadata": {"service": "sqladmin.googleapis.com", "consumer": "projects/123"}}],
    }))
    assert isinstance(err, ApiDisabled) and err.service == "sqladmin.googleapis.com"
    assert f"gcloud services enable sqladmin.googleapis.com --project {PROJECT}" in str(err)


def test_iam_permission_denied_names_permission_role_and_command():
    err = translate(http_error(403, {
        "message": "Permission 'run.services.create' denied on resource 'projects/p/locations/r/services/s'",
        "status": "PERMISSION_DENIED",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IAM_PERMISSION_DENIED",
                     "metadata": {"permission": "run.services.create"}}],
    }, uri="https://run.googleapis.com/v2/projects/p/locations/r/services"))
    assert isinstance(err, PermissionDenied)
    assert err.permission == "run.services.create" and err.role == "roles/run.admin"
    assert f"gcloud projects add-iam-policy-binding {PROJECT} --member=user:YOUR_EMAIL --role=roles/run.admin" in str(err)


def test_storage_style_403_finds_the_permission_in_the_message():
    err = translate(http_error(403, {
        "message": "me@example.com does not have storage.buckets.create access to the Google Cloud project.",
        "errors": [{"reason": "forbidden", "domain": "global"}],
    }, uri="https://storage.googleapis.com/storage/v1/b?project=p"))
    assert isinstance(err, PermissionDenied) and err.role == "roles/storage.admin"


def test_403_without_a_permission_falls_back_to_the_api_role():
    err = translate(http_error(403, {"message": "The client is not authorized to make this request.",
                                     "errors": [{"reason": "notAuthorized"}]}))
    assert isinstance(err, PermissionDenied) and err.role == "roles/cloudsql.admin"


def test_emulated_uris_are_attributed_to_their_api():
    assert gerrors.api_of("http://127.0.0.1:9/sqladmin/v1/projects/p") == "sqladmin"
    assert gerrors.api_of("http://127.0.0.1:9/storage/upload/storage/v1/b/x/o") == "storage"
    assert gerrors.api_of("https://run.googleapis.com/v2/projects/p") == "run"


@pytest.mark.parametrize("status,error,kind", [
    (404, {"message": "The Cloud SQL instance does not exist.", "errors": [{"reason": "instanceDoesNotExist"}]}, NotFound),
    (409, {"message": "The Cloud SQL instance already exists.", "errors": [{"reason": "instanceAlreadyExists"}]}, AlreadyExists),
    (409, {"message": "Resource already exists", "status": "ALREADY_EXISTS"}, AlreadyExists),
    (409, {"message": "Your previous request to create the named bucket succeeded and you already own it."}, AlreadyExists),
    (409, {"message": "There were concurrent policy changes.", "status": "ABORTED"}, gerrors.Aborted),
    (412, {"message": "Precondition Failed"}, gerrors.Aborted),
    (409, {"message": "The requested bucket name is not available. The bucket namespace is shared by all users."},
     Conflict),
    (409, {"message": "Operation failed because another operation was already in progress.",
           "status": "ALREADY_EXISTS", "errors": [{"reason": "operationInProgress"}]}, gerrors.Aborted),
    (429, {"message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}, RateLimited),
    (403, {"message": "Rate Limit Exceeded", "errors": [{"reason": "rateLimitExceeded"}]}, RateLimited),
    (500, {"message": "Internal error"}, Unavailable),
    (503, {"message": "The service is currently unavailable.", "status": "UNAVAILABLE"}, Unavailable),
    (400, {"message": "Invalid request: tier", "status": "INVALID_ARGUMENT"}, gerrors.InvalidRequest),
    (401, {"message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}, PermissionDenied),
])
def test_status_table(status, error, kind):
    err = translate(http_error(status, error))
    assert type(err) is kind
    assert err.status == status
    assert str(err).startswith("creating Cloud SQL instance mlflow-db: ")


def test_not_found_is_never_reported_as_something_else():
    # A 404 stays NotFound even when the text mentions permissions or quota.
    err = translate(http_error(404, {"message": "Permission denied or quota: not found"}))
    assert type(err) is NotFound


def test_501_is_permanent_and_not_retried():
    err = translate(http_error(501, {"message": "Not implemented"}))
    assert type(err) is GcpError and not isinstance(err, gerrors.DEFAULT_RETRY.retryable)


class _Request:
    """A request object at the Google API boundary that fails a given number of times."""

    uri = "https://storage.googleapis.com/storage/v1/b"

    def __init__(self, failures: list[HttpError]):
        self.failures = failures
        self.calls = 0

    def execute(self, num_retries=0):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return {"ok": True}


def test_execute_retries_inside_the_budget_and_chains_the_cause():
    slept: list[float] = []
    clock = lambda: float(sum(slept))  # noqa: E731
    req = _Request([http_error(503, {"message": "busy"}) for _ in range(2)])
    assert gerrors.execute(req, "x", project=PROJECT, sleep=slept.append, clock=clock) == {"ok": True}
    assert slept == [1.0, 2.0]

    slept.clear()
    req = _Request([http_error(503, {"message": "busy"}) for _ in range(50)])
    policy = gerrors.RetryPolicy(budget_seconds=30, initial_delay=1, multiplier=2, max_delay=8)
    with pytest.raises(Unavailable) as info:
        gerrors.execute(req, "reading bucket b", project=PROJECT, policy=policy, sleep=slept.append, clock=clock)
    assert slept == [1, 2, 4, 8, 8]  # 23 s; one more 8 s would pass 30
    assert "still failing after 6 attempts" in str(info.value)
    assert isinstance(info.value.__cause__, HttpError)


def test_execute_does_not_retry_permanent_errors():
    req = _Request([http_error(404, {"message": "gone"})])
    with pytest.raises(NotFound):
        gerrors.execute(req, "x", project=PROJECT, sleep=lambda s: None, clock=lambda: 0.0)
    assert req.calls == 1
