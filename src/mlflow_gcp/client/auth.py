"""The MLflow auth plugin for a private Cloud Run server: `MLFLOW_TRACKING_AUTH=gcp`.

    export MLFLOW_TRACKING_URI=https://mlflow-tracking-123456789.europe-west9.run.app
    export MLFLOW_TRACKING_AUTH=gcp

MLflow finds `GcpRequestAuthProvider` through the `mlflow.request_auth_provider` entry point and
calls `get_auth()` for every request; the `requests` auth object it returns adds a Google ID token
whose audience is the server's URL (see `tokens` for where tokens come from and the settings).

- Tokens go only to the service: the origin of the MLflow tracking URI (`MLFLOW_TRACKING_URI` or
  `mlflow.set_tracking_uri`) and those listed in `MLFLOW_GCP_TOKEN_ORIGINS`. Only when none is
  configured does a token go to the origin the caller addressed (`MlflowClient(tracking_uri=...)`,
  plain `requests`). A redirect never carries one elsewhere: requests drops the header on a
  cross-origin redirect, and the retry below happens only where the token was sent.
- An `Authorization` header the caller set is left alone (and never retried).
- On a 401 from the origin the token was sent to, the token is refreshed once and the request
  sent again (rewinding a file body).
- Tokens come from one process-wide cache, so a session of any length keeps working.

`GcpAuth` also works with plain `requests`: `requests.get(url, auth=GcpAuth())`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
import urllib.parse

import requests.auth

from mlflow_gcp.client import tokens, uploads

log = logging.getLogger(__name__)

AUTHORIZATION = "Authorization"
DEV_USER_ENV = "MLFLOW_GCP_DEV_USER"
DEV_USER_HEADER = "X-Mlflow-Gcp-Dev-User"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Cloud Run checks this header when present and removes the token's signature before passing it
# to the container, leaving `Authorization` untouched: so the server (server/identity.py) gets an
# intact, verifiable copy of the same token there.
SERVERLESS_AUTHORIZATION = "X-Serverless-Authorization"


def set_token(headers, token: str) -> None:
    """The ID token in both headers Cloud Run reads (see SERVERLESS_AUTHORIZATION)."""
    headers[AUTHORIZATION] = headers[SERVERLESS_AUTHORIZATION] = f"Bearer {token}"


PROVIDER_NAME = "gcp"
TOKEN_ORIGINS_ENV = "MLFLOW_GCP_TOKEN_ORIGINS"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_warned_origins: set[str] = set()


def audience_for(url: str) -> str:
    """The ID token audience for a request URL: `MLFLOW_GCP_AUDIENCE`, else the URL's origin."""
    if override := os.environ.get(tokens.AUDIENCE_ENV):
        return override
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@functools.lru_cache(maxsize=256)  # asked on every request, for the same few URLs
def origin_of(url: str | None) -> str | None:
    """scheme://host[:port] of an http(s) URL, normalised (lower case, no default port)."""
    if not url:
        return None
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _mlflow_tracking_uri() -> str | None:
    """MLflow's tracking URI when MLflow is already loaded (set_tracking_uri or its env)."""
    mlflow = sys.modules.get("mlflow")
    get = getattr(mlflow, "get_tracking_uri", None)
    if get is None:
        return None
    try:
        return str(get())
    except Exception:  # noqa: BLE001 -- a half-imported MLflow must not break the request
        return None


def service_origins(env=None) -> set[str]:
    """The origins that may receive tokens; empty when nothing names the service."""
    env = os.environ if env is None else env
    found = set()
    for raw in env.get(TOKEN_ORIGINS_ENV, "").split(","):
        if raw.strip():
            origin = origin_of(raw)
            if origin is None:
                raise tokens.TokenError(f"{TOKEN_ORIGINS_ENV}: {raw.strip()!r} is not an "
                                        "http(s) URL", hint="e.g. https://mlflow.example.com")
            found.add(origin)
    for uri in (env.get("MLFLOW_TRACKING_URI"), _mlflow_tracking_uri()):
        if origin := origin_of(uri):
            found.add(origin)
    return found


class GcpAuth(requests.auth.AuthBase):
    """`origins`: where tokens may go, besides the configured ones (see the module docstring)."""

    def __init__(self, cache: tokens.TokenCache | None = None, audience: str | None = None,
                 origins: tuple[str, ...] = ()):
        self._cache = cache
        self.audience = audience
        self.origins = {o for o in map(origin_of, origins) if o}

    @property
    def cache(self) -> tokens.TokenCache:
        return self._cache or tokens.default_cache()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if AUTHORIZATION in request.headers:
            return request
        dev_user = os.environ.get(DEV_USER_ENV)
        if dev_user and urllib.parse.urlsplit(request.url).hostname in _LOOPBACK:
            # `mlflow-gcp local --permissions`: name the caller; only local mode accepts this.
            request.headers[DEV_USER_HEADER] = dev_user
            return request
        origin = origin_of(request.url)
        allowed = self.origins | service_origins()
        if allowed and origin not in allowed:
            if origin not in _warned_origins:
                _warned_origins.add(origin)
                log.warning("not sending a Google ID token to %s: the service is %s (list "
                            "other origins in %s)", origin, ", ".join(sorted(allowed)),
                            TOKEN_ORIGINS_ENV)
            return request
        audience = self.audience or audience_for(request.url)
        token = self.cache.get(audience)
        set_token(request.headers, token)
        sent = f"Bearer {token}"
        # Where a file body starts, so a retry can send it again (requests' digest auth does so).
        body_pos = None
        if hasattr(request.body, "tell"):
            try:
                body_pos = request.body.tell()
            except OSError:
                body_pos = None

        def retry_on_401(response: requests.Response, **send_kwargs) -> requests.Response:
            # requests copies this hook onto redirected requests: a 401 from where a redirect led
            # (another origin, or a request that no longer carries our token) is not ours to
            # answer with a token.
            if (response.status_code != 401 or origin_of(response.request.url) != origin
                    or response.request.headers.get(AUTHORIZATION) != sent):
                return response
            return self._retry(response, audience, body_pos, send_kwargs)

        request.register_hook("response", retry_on_401)
        return request

    def _retry(self, response: requests.Response, audience: str, body_pos: int | None,
               send_kwargs: dict) -> requests.Response:
        sent = response.request
        rejected = sent.headers.get(AUTHORIZATION, "").removeprefix("Bearer ")
        log.debug("401 from %s: refreshing the ID token and retrying once", audience)
        fresh = self.cache.refresh_after_rejection(audience, rejected)
        body = sent.body
        if body is not None and not isinstance(body, (bytes, str)):
            if body_pos is None or not hasattr(body, "seek"):
                # A consumed stream cannot be sent twice: the caller gets the 401, and its next
                # request the new token.
                return response
            body.seek(body_pos)
        response.content  # noqa: B018 -- read the error body so the connection can be reused
        response.close()
        retry = sent.copy()
        set_token(retry.headers, fresh)
        # The adapter sends without running hooks again, so this cannot loop.
        second = response.connection.send(retry, **send_kwargs)
        second.history.append(response)
        second.request = retry
        return second


def _check_google_auth() -> None:
    try:
        found = importlib.util.find_spec("google.auth") is not None
    except ModuleNotFoundError:  # not even the `google` namespace package
        found = False
    if not found:
        raise tokens.TokenError("the gcp auth plugin needs google-auth", hint=tokens.INSTALL_HINT)


class GcpRequestAuthProvider:
    """MLflow's RequestAuthProvider interface (get_name/get_auth), without importing MLflow:
    the registry only calls these two methods, and this module stays cheap to import."""

    def get_name(self) -> str:
        return PROVIDER_NAME

    def get_auth(self) -> GcpAuth:
        _check_google_auth()
        # Artifacts over Cloud Run's 32 MiB cap go in signed parts (see client/uploads.py).
        uploads.apply_defaults()
        return GcpAuth()
