"""The MLflow auth plugin for a private Cloud Run server: `MLFLOW_TRACKING_AUTH=gcp`.

    export MLFLOW_TRACKING_URI=https://mlflow-tracking-123456789.europe-west9.run.app
    export MLFLOW_TRACKING_AUTH=gcp

MLflow finds `GcpRequestAuthProvider` through the `mlflow.request_auth_provider` entry point and
calls `get_auth()` for every request; the `requests` auth object it returns adds a Google ID token
whose audience is the server's URL (see `tokens` for where tokens come from and the settings).

- An `Authorization` header the caller set is left alone (and never retried).
- On a 401 the token is refreshed once and the request sent again (rewinding a file body).
- Tokens come from one process-wide cache, so a session of any length keeps working.

`GcpAuth` also works with plain `requests`: `requests.get(url, auth=GcpAuth())`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import urllib.parse

import requests.auth

from mlflow_gcp.client import tokens, uploads

log = logging.getLogger(__name__)

AUTHORIZATION = "Authorization"
PROVIDER_NAME = "gcp"


def audience_for(url: str) -> str:
    """The ID token audience for a request URL: `MLFLOW_GCP_AUDIENCE`, else the URL's origin."""
    if override := os.environ.get(tokens.AUDIENCE_ENV):
        return override
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class GcpAuth(requests.auth.AuthBase):
    def __init__(self, cache: tokens.TokenCache | None = None, audience: str | None = None):
        self._cache = cache
        self.audience = audience

    @property
    def cache(self) -> tokens.TokenCache:
        return self._cache or tokens.default_cache()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if AUTHORIZATION in request.headers:
            return request
        audience = self.audience or audience_for(request.url)
        request.headers[AUTHORIZATION] = f"Bearer {self.cache.get(audience)}"
        # Where a file body starts, so a retry can send it again (requests' digest auth does so).
        body_pos = None
        if hasattr(request.body, "tell"):
            try:
                body_pos = request.body.tell()
            except OSError:
                body_pos = None

        def retry_on_401(response: requests.Response, **send_kwargs) -> requests.Response:
            return self._retry(response, audience, body_pos, send_kwargs)

        request.register_hook("response", retry_on_401)
        return request

    def _retry(self, response: requests.Response, audience: str, body_pos: int | None,
               send_kwargs: dict) -> requests.Response:
        if response.status_code != 401:
            return response
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
        retry.headers[AUTHORIZATION] = f"Bearer {fresh}"
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
