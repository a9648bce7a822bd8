"""Google API clients, each built once, and the one place requests are executed.

Credentials come from Application Default Credentials. The emulation setting
`MLFLOW_GCP_API_ROOT=http://host:port` sends every call to `<root>/<api>/<servicePath>` with
anonymous credentials: that is how the tests (and a standalone fake) stand in for Google. Under
emulation every wait (operation polls, retry backoffs) advances the emulator's clock instead of
sleeping (`MLFLOW_GCP_EMULATOR_CLOCK=0` sleeps for real), so Google's real durations cost no real
time.
googleapiclient is imported lazily so `mlflow-gcp --help` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from mlflow_gcp.errors import ApiDisabled, GcpError, PermissionDenied
from mlflow_gcp.gcp import errors as gerrors

log = logging.getLogger(__name__)

API_ROOT_ENV = "MLFLOW_GCP_API_ROOT"
# Emulation only: "0" sleeps for real; otherwise waits advance the emulator's clock (<root>/_fake/clock).
CLOCK_ENV = "MLFLOW_GCP_EMULATOR_CLOCK"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
ADC_HINT = "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS"


def quota_project_hint(project: str) -> str:
    return (f"run `gcloud auth application-default set-quota-project {project}` (user credentials without a "
            "quota project bill gcloud's own project, where these APIs are off)")

# API name -> (version, servicePath of its discovery document). The paths are checked against the
# bundled discovery documents by a unit test.
APIS: dict[str, tuple[str, str]] = {
    "serviceusage": ("v1", ""),
    "sqladmin": ("v1", ""),
    "storage": ("v1", "storage/v1/"),
    "run": ("v2", ""),
    "iam": ("v1", ""),
    "iamcredentials": ("v1", ""),
    "cloudresourcemanager": ("v1", ""),
    "secretmanager": ("v1", ""),
    "artifactregistry": ("v1", ""),
    "cloudbuild": ("v1", ""),
    "logging": ("v2", ""),
    "cloudscheduler": ("v1", ""),
}

# Seconds an HTTP request may take before it counts as unavailable (then retried).
HTTP_TIMEOUT_SECONDS = 60
# Polling a long-running operation: start fast (most finish in seconds), back off to this.
POLL_INTERVAL_SECONDS = 2.0


class Clients:
    """The API clients of one project, plus how to execute and wait (injectable for tests)."""

    def __init__(
        self,
        project: str,
        *,
        api_root: str | None = None,
        credentials: Any = None,
        retry: gerrors.RetryPolicy = gerrors.DEFAULT_RETRY,
        poll_interval: float = POLL_INTERVAL_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.project = project
        self.api_root = api_root.rstrip("/") if api_root else None
        self._credentials = credentials
        self.retry = retry
        self.poll_interval = poll_interval
        self.sleep = sleep
        self.clock = clock
        # Hears the waits for Google's propagation (what, seconds so far); the CLI shows them.
        self.progress: Callable[[str, float], None] | None = None
        self._built: dict[str, Any] = {}
        # What this run knows exists, so that a refusal Google will lift by itself is waited out
        # (see classify): APIs found or made enabled, service accounts found or created.
        self.enabled_services: set[str] = set()
        self.known_accounts: set[str] = set()
        self._project_number: str | None = None
        self._classifying = False

    @classmethod
    def from_env(cls, project: str, env: dict | None = None, **kwargs) -> Clients:
        env = os.environ if env is None else env
        root = env.get(API_ROOT_ENV) or None
        if root and env.get(CLOCK_ENV) != "0" and "sleep" not in kwargs and "clock" not in kwargs:
            emulated = EmulatorClock(root)
            kwargs.update(sleep=emulated.sleep, clock=emulated.now)
        return cls(project, api_root=root, **kwargs)

    @property
    def emulated(self) -> bool:
        return self.api_root is not None

    @property
    def credentials(self) -> Any:
        if self._credentials is None:
            self._credentials = _credentials(self.api_root)
        return self._credentials

    def api(self, name: str) -> Any:
        """The googleapiclient Resource for `name`, built on first use."""
        if name not in self._built:
            self._built[name] = self._build(name)
        return self._built[name]

    def _build(self, name: str) -> Any:
        import google_auth_httplib2
        import httplib2
        from googleapiclient import discovery

        version, service_path = APIS[name]
        options = None
        if self.api_root:
            options = {"api_endpoint": f"{self.api_root}/{name}/{service_path}"}
        http = google_auth_httplib2.AuthorizedHttp(
            self.credentials, http=httplib2.Http(timeout=HTTP_TIMEOUT_SECONDS)
        )
        return discovery.build(
            name,
            version,
            http=http,
            client_options=options,
            static_discovery=True,
            cache_discovery=False,
        )

    def fix_media_uri(self, request: Any, api: str) -> Any:
        """Media uploads use an absolute /upload/... path that api_endpoint does not move (only
        the host is swapped, keeping https); under emulation send them to <root>/<api>/upload/..."""
        if self.api_root:
            from urllib.parse import urlsplit, urlunsplit

            parts = urlsplit(request.uri)
            root = urlsplit(self.api_root)
            request.uri = urlunsplit((root.scheme, root.netloc, f"{root.path}/{api}{parts.path}", parts.query, ""))
        return request

    def execute(self, request: Any, what: str, *, retry: gerrors.RetryPolicy | None = None) -> dict:
        """Run one request with the retry policy; Google errors become ours (gcp.errors)."""
        return gerrors.execute(
            request,
            what,
            project=self.project,
            policy=retry or self.retry,
            sleep=self.sleep,
            clock=self.clock,
            classify=self.classify,
            progress=self.progress,
        )

    def classify(self, exc: GcpError) -> GcpError:
        """Tell Google's eventual consistency from real errors by looking at what exists: an API
        that Service Usage calls enabled is still propagating (ApiNotReady); an account that IAM
        has is still too new for the API refusing it (AccountNotReady); a SERVICE_DISABLED that
        names another project as its consumer is a credentials problem (QuotaProjectMissing)."""
        if self._classifying:
            return exc  # the look-ups below are calls too: never classify their own errors
        self._classifying = True
        try:
            if isinstance(exc, ApiDisabled):
                return self._classify_disabled(exc)
            email = gerrors.missing_account(exc)
            if email and self._account_exists(email):
                return gerrors.AccountNotReady(email, exc)
            return exc
        finally:
            self._classifying = False

    def _classify_disabled(self, exc: ApiDisabled) -> GcpError:
        service = getattr(exc, "service", None)
        consumer = (getattr(exc, "consumer", None) or "").removeprefix("projects/")
        if consumer and consumer != self.project and consumer != self._number():
            if self._number() is not None:
                err = gerrors.QuotaProjectMissing(
                    f"{exc.message.split(':')[0]}: Google billed project {consumer} for the call, not "
                    f"{self.project}, and {service} is off there",
                    hint=quota_project_hint(self.project), status=exc.status)
                err.consumer, err.service = consumer, service
                return err
        if service and self._service_enabled(service):
            return gerrors.ApiNotReady(service, exc)
        return exc

    def _number(self) -> str | None:
        """The project's number (errors name consumers by number); None when it cannot be read."""
        if self._project_number is None:
            try:
                got = self.execute(self.api("cloudresourcemanager").projects().get(projectId=self.project),
                                   f"reading project {self.project}", retry=gerrors.NO_RETRY)
            except GcpError:
                return None
            self._project_number = str(got.get("projectNumber") or "") or None
        return self._project_number

    def _service_enabled(self, service: str) -> bool:
        if service not in self.enabled_services:
            try:
                got = self.execute(self.api("serviceusage").services().get(
                    name=f"projects/{self.project}/services/{service}"), f"checking {service}", retry=gerrors.NO_RETRY)
            except GcpError:
                return False
            if got.get("state") == "ENABLED":
                self.enabled_services.add(service)
        return service in self.enabled_services

    def _account_exists(self, email: str) -> bool:
        if email not in self.known_accounts:
            try:
                self.execute(self.api("iam").projects().serviceAccounts().get(
                    name=f"projects/-/serviceAccounts/{email}"), f"reading service account {email}",
                    retry=gerrors.NO_RETRY)
            except GcpError:
                return False
            self.known_accounts.add(email)
        return True


class EmulatorClock:
    """Time under emulation: the emulator's clock, read and advanced over HTTP (<root>/_fake/clock)."""

    def __init__(self, root: str):
        self.url = root.rstrip("/") + "/_fake/clock"

    def _call(self, url: str, body: dict | None = None) -> float:
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=HTTP_TIMEOUT_SECONDS) as resp:
            return float(json.loads(resp.read())["now"])

    def now(self) -> float:
        return self._call(self.url)

    def sleep(self, seconds: float) -> None:
        self._call(self.url + ":sleep", {"seconds": seconds})


def _credentials(api_root: str | None) -> Any:
    if api_root:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        creds, _ = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError as err:
        raise PermissionDenied("no Google credentials found", hint=ADC_HINT) from err
    return creds


def for_config(cfg) -> Clients:
    """Clients for a deployment's project, honouring MLFLOW_GCP_API_ROOT."""
    return Clients.from_env(cfg.project)
