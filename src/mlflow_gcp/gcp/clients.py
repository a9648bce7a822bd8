"""Google API clients, each built once, and the one place requests are executed.

Credentials come from Application Default Credentials. The emulation setting
`MLFLOW_GCP_API_ROOT=http://host:port` sends every call to `<root>/<api>/<servicePath>` with
anonymous credentials: that is how the tests (and a standalone fake) stand in for Google.
googleapiclient is imported lazily so `mlflow-gcp --help` stays fast.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from mlflow_gcp.errors import PermissionDenied
from mlflow_gcp.gcp import errors as gerrors

log = logging.getLogger(__name__)

API_ROOT_ENV = "MLFLOW_GCP_API_ROOT"
# Emulation only: seconds between polls of a long-running operation (tests use 0).
POLL_ENV = "MLFLOW_GCP_POLL_SECONDS"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
ADC_HINT = "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS"

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
        self._built: dict[str, Any] = {}

    @classmethod
    def from_env(cls, project: str, env: dict | None = None, **kwargs) -> Clients:
        env = os.environ if env is None else env
        root = env.get(API_ROOT_ENV) or None
        if root and env.get(POLL_ENV) and "poll_interval" not in kwargs:
            kwargs["poll_interval"] = float(env[POLL_ENV])
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
        )


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
