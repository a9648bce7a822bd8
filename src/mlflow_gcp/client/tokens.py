"""Google ID tokens for a private Cloud Run service: where they come from, and a cache.

Token sources, first match wins (an explicitly configured source that fails is an error, never a
silent fall-through to the next one):

1. a service-account key file: `MLFLOW_GCP_CREDENTIALS_FILE`, else `GOOGLE_APPLICATION_CREDENTIALS`
   when that file is a service-account key (and 2. is not asked for);
2. a service account to impersonate: `MLFLOW_GCP_IMPERSONATE_SERVICE_ACCOUNT` (your own
   Application Default Credentials need roles/iam.serviceAccountTokenCreator on it);
3. the metadata server, when running on Google Cloud (Compute Engine, Cloud Run, GKE, Batch...);
4. your gcloud login (`gcloud auth print-identity-token`). For a user account gcloud cannot mint a
   token for an arbitrary audience (`--audiences` needs a service account), so the token carries
   gcloud's own audience; Cloud Run accepts it from a user holding roles/run.invoker on the
   service, which is what `gcloud run services proxy` and Google's curl examples rely on. When
   the gcloud account is a service account, the token gets the service URL as audience.

The audience is the service URL (`MLFLOW_GCP_AUDIENCE` overrides it, e.g. for a custom audience).
Tokens are cached per audience and refreshed `REFRESH_MARGIN` seconds before they expire; one
refresh runs at a time per audience, and concurrent callers wait for it.

google-auth is imported only when a token is first needed, so importing this module is cheap.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlflow_gcp.errors import MlflowGcpError

log = logging.getLogger(__name__)

CREDENTIALS_FILE_ENV = "MLFLOW_GCP_CREDENTIALS_FILE"
IMPERSONATE_ENV = "MLFLOW_GCP_IMPERSONATE_SERVICE_ACCOUNT"
AUDIENCE_ENV = "MLFLOW_GCP_AUDIENCE"
GCLOUD_ENV = "MLFLOW_GCP_GCLOUD"  # path of the gcloud binary, if not the one on PATH

# Google ID tokens live one hour; renewing five minutes early covers clock skew and slow
# requests that start just before expiry.
REFRESH_MARGIN = 300.0
# Probing the metadata server off Google Cloud costs up to this much once per process
# (NO_GCE_CHECK=true skips the probe).
METADATA_PROBE_TIMEOUT = 1.0
GCLOUD_TIMEOUT = 60.0
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
INSTALL_HINT = "pip install google-auth (or pip install mlflow-gcp)"
NO_CREDENTIALS_HINT = (
    f"set {CREDENTIALS_FILE_ENV} to a service-account key file, or "
    f"{IMPERSONATE_ENV} to a service account you may impersonate, or run "
    "`gcloud auth login`"
)


class TokenError(MlflowGcpError):
    """No ID token could be obtained for the service."""


@dataclass(frozen=True)
class Token:
    value: str
    expiry: float  # seconds since the epoch, from the token's own `exp` claim
    source: str

    def __repr__(self) -> str:  # never print the token itself
        return f"Token(source={self.source!r}, expiry={self.expiry})"


def jwt_claims(token: str) -> dict:
    """The claims of a JWT, unverified (the server verifies; we only need `exp`)."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as err:
        raise TokenError("the token source returned something that is not a JWT") from err


def _token(value: str, source: str) -> Token:
    exp = jwt_claims(value).get("exp")
    if not isinstance(exp, (int, float)):
        raise TokenError(f"the ID token from {source} has no expiry")
    return Token(value, float(exp), source)


def _google_auth():
    """Import google-auth's transport and fail with an install hint when it is missing."""
    try:
        import google.auth  # noqa: F401
        import google.auth.transport.requests as transport
    except ImportError as err:
        raise TokenError("the gcp auth plugin needs google-auth", hint=INSTALL_HINT) from err
    return transport


class _CredentialsSource:
    """A source built on google-auth credentials objects, one per audience."""

    name = "google-auth"

    def __init__(self) -> None:
        self._creds: dict[str, object] = {}
        self._lock = threading.Lock()

    def _make(self, audience: str, request):
        raise NotImplementedError

    def fetch(self, audience: str) -> Token:
        transport = _google_auth()
        import google.auth.exceptions

        request = transport.Request()
        try:
            with self._lock:
                creds = self._creds.get(audience)
                if creds is None:
                    creds = self._creds[audience] = self._make(audience, request)
            creds.refresh(request)
        except google.auth.exceptions.GoogleAuthError as err:
            raise TokenError(f"{self.name} could not mint an ID token: {err}") from err
        return _token(creds.token, self.name)


class KeyFileSource(_CredentialsSource):
    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.name = f"key file {path}"

    def _make(self, audience: str, request):
        from google.oauth2 import service_account

        try:
            return service_account.IDTokenCredentials.from_service_account_file(
                self.path, target_audience=audience
            )
        except (OSError, ValueError, KeyError) as err:
            raise TokenError(
                f"{self.path} is not a usable service-account key ({err.__class__.__name__})",
                hint=f"check {CREDENTIALS_FILE_ENV}",
            ) from err


class ImpersonatedSource(_CredentialsSource):
    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.name = f"impersonated {target}"

    def _make(self, audience: str, request):
        import google.auth
        from google.auth import impersonated_credentials

        try:
            source, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        except google.auth.exceptions.DefaultCredentialsError as err:
            raise TokenError(
                f"impersonating {self.target} needs your own credentials first",
                hint="run `gcloud auth application-default login`",
            ) from err
        target = impersonated_credentials.Credentials(
            source_credentials=source,
            target_principal=self.target,
            target_scopes=[CLOUD_PLATFORM_SCOPE],
        )
        return impersonated_credentials.IDTokenCredentials(
            target, target_audience=audience, include_email=True
        )


class MetadataSource(_CredentialsSource):
    name = "metadata server"

    def _make(self, audience: str, request):
        from google.auth import compute_engine

        return compute_engine.IDTokenCredentials(
            request, audience, use_metadata_identity_endpoint=True
        )

    @staticmethod
    def available(env: Mapping[str, str]) -> bool:
        if env.get("NO_GCE_CHECK") == "true":
            return False
        transport = _google_auth()
        from google.auth.compute_engine import _metadata

        # Off Google Cloud the probe fails by design; google-auth would log that as a warning.
        probe_log = logging.getLogger(_metadata.__name__)
        level = probe_log.level
        probe_log.setLevel(logging.ERROR)
        try:
            return _metadata.ping(transport.Request(), timeout=METADATA_PROBE_TIMEOUT,
                                  retry_count=1)
        finally:
            probe_log.setLevel(level)


class GcloudSource:
    """`gcloud auth print-identity-token`: the user's own login, the last resort."""

    def __init__(self, gcloud: str):
        self.gcloud = gcloud
        self.name = "gcloud"
        # User accounts refuse --audiences; remember that instead of asking twice an hour.
        self._audiences_refused = False

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [self.gcloud, "auth", "print-identity-token", *args, "--quiet"],
                capture_output=True, text=True, timeout=GCLOUD_TIMEOUT, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise TokenError(f"could not run {self.gcloud}: {err}") from err

    def fetch(self, audience: str) -> Token:
        proc = None
        if not self._audiences_refused:
            proc = self._run(f"--audiences={audience}")
            if proc.returncode != 0 and "service account" in proc.stderr.lower():
                self._audiences_refused = True
                proc = None
        if proc is None:
            proc = self._run()
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise TokenError(f"gcloud could not print an identity token: {last}",
                             hint="run `gcloud auth login`")
        return _token(proc.stdout.strip(), self.name)


def _is_service_account_key(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("type") == "service_account"
    except (OSError, ValueError, AttributeError):
        return False


def resolve_source(env: Mapping[str, str] | None = None):
    """The first token source that applies, in the documented order."""
    env = os.environ if env is None else env
    if path := env.get(CREDENTIALS_FILE_ENV):
        if not os.path.isfile(path):
            raise TokenError(f"{CREDENTIALS_FILE_ENV}={path}: no such file")
        return KeyFileSource(path)
    # Asking for impersonation explicitly beats an ambient key file, which then serves as the
    # credentials that impersonate.
    if target := env.get(IMPERSONATE_ENV):
        return ImpersonatedSource(target)
    adc = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if adc and _is_service_account_key(adc):
        return KeyFileSource(adc)
    if MetadataSource.available(env):
        return MetadataSource()
    if gcloud := shutil.which(env.get(GCLOUD_ENV) or "gcloud"):
        return GcloudSource(gcloud)
    raise TokenError("no Google credentials found for the gcp auth plugin", hint=NO_CREDENTIALS_HINT)


class TokenCache:
    """ID tokens per audience, renewed before they expire; safe to share between threads."""

    def __init__(self, source_factory: Callable[[], object] = resolve_source,
                 clock: Callable[[], float] = time.time, margin: float = REFRESH_MARGIN):
        self._source_factory = source_factory
        self._source = None
        self.clock = clock
        self.margin = margin
        self._tokens: dict[str, tuple[Token, float]] = {}  # audience -> (token, refresh at)
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # how many tokens were minted: a figure for tests and benchmarks

    def _source_for_fetch(self):
        with self._lock:
            if self._source is None:
                self._source = self._source_factory()
            return self._source

    def _audience_lock(self, audience: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(audience, threading.Lock())

    def _fresh(self, entry: tuple[Token, float] | None) -> bool:
        return entry is not None and entry[1] > self.clock()

    def get(self, audience: str) -> str:
        entry = self._tokens.get(audience)
        if self._fresh(entry):
            return entry[0].value
        with self._audience_lock(audience):
            # Another thread may have refreshed while we waited for the lock.
            entry = self._tokens.get(audience)
            if self._fresh(entry):
                return entry[0].value
            return self._fetch(audience).value

    def refresh_after_rejection(self, audience: str, rejected: str) -> str:
        """A new token after the server refused `rejected`, unless someone already replaced it."""
        with self._audience_lock(audience):
            entry = self._tokens.get(audience)
            if self._fresh(entry) and entry[0].value != rejected:
                return entry[0].value
            return self._fetch(audience).value

    def _fetch(self, audience: str) -> Token:
        source = self._source_for_fetch()
        token = source.fetch(audience)
        now = self.clock()
        with self._lock:
            self.fetches += 1
        # A source may hand out a token it cached itself (gcloud does) with less than the margin
        # left: use it for half its remaining life rather than fetching on every request.
        lifetime = token.expiry - now
        refresh_at = token.expiry - min(self.margin, lifetime / 2)
        if lifetime <= 0:
            log.warning("the ID token from %s has already expired; check this machine's clock",
                        token.source)
        log.debug("new ID token for %s from %s, expires in %ds", audience, token.source, lifetime)
        self._tokens[audience] = (token, refresh_at)
        return token

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()
            self._source = None


_default_cache: TokenCache | None = None
_default_lock = threading.Lock()


def default_cache() -> TokenCache:
    """The process-wide cache: MLflow asks for a new auth object on every request."""
    global _default_cache
    with _default_lock:
        if _default_cache is None:
            _default_cache = TokenCache()
        return _default_cache
