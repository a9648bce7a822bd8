"""Where the plugin's ID tokens may go: the service's origin only, never where a redirect leads.

The service and the other host are two local HTTP servers (127.0.0.1 and localhost, so a
redirect between them is a cross-host one); tokens come from the local identity provider.
"""

from __future__ import annotations

import logging

import pytest
import requests

from mlflow_gcp.client import auth, tokens
from tests.support.clock import FakeClock
from tests.support.httpserver import BackgroundServer, QuietHandler
from tests.support.idp import LocalIdentityProvider

SA = "trainer@test-project.iam.gserviceaccount.com"


class Recorder(BackgroundServer):
    """Records each request's Authorization. /away and /api/... redirect to `elsewhere`; /here
    redirects to its own /private, which answers 401 to its first request and 200 afterwards;
    anything else answers `status`."""

    def __init__(self, status: int = 401, elsewhere: str = ""):
        self.status, self.elsewhere, self.seen = status, elsewhere, []

    class handler_class(QuietHandler):
        def do_GET(self) -> None:
            owner = self.server.owner
            given = self.headers.get("Authorization")
            owner.seen.append((self.path, given))
            if self.path == "/away" or self.path.startswith("/api/"):
                return self.send_body(302, b"", headers={"Location": f"{owner.elsewhere}/x"})
            if self.path == "/here":
                return self.send_body(302, b"", headers={"Location": "/private"})
            if self.path == "/private":
                first = [p for p, _ in owner.seen].count("/private") == 1
                return self.send_body(401 if first else 200, b"private")
            self.send_body(owner.status, b"answer")


@pytest.fixture
def cache(tmp_path):
    clock = FakeClock()
    with LocalIdentityProvider(clock=clock) as idp:
        key = idp.write_key_file(tmp_path / "key.json", SA)
        yield tokens.TokenCache(lambda: tokens.KeyFileSource(str(key)), clock=clock)


@pytest.fixture
def env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", auth.TOKEN_ORIGINS_ENV, tokens.AUDIENCE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(auth, "_warned_origins", set())
    return monkeypatch


@pytest.fixture
def hosts():
    with Recorder(status=401) as other:
        other.url = other.url.replace("127.0.0.1", "localhost")
        with Recorder(status=200, elsewhere=other.url) as service:
            yield service, other


@pytest.mark.parametrize("configured", [False, True], ids=["no-tracking-uri", "tracking-uri"])
def test_a_redirect_to_another_host_that_answers_401_gets_no_token(cache, env, hosts, configured):
    service, other = hosts
    if configured:
        env.setenv("MLFLOW_TRACKING_URI", service.url)
    resp = requests.get(f"{service.url}/away", auth=auth.GcpAuth(cache), timeout=10)
    assert resp.status_code == 401 and resp.url == f"{other.url}/x"
    assert other.seen == [("/x", None)]  # neither the redirect nor a retry carried the token
    assert service.seen[0][1].startswith("Bearer ")
    assert cache.fetches == 1  # and no token was refreshed for someone else's 401


def test_mlflows_own_client_sends_no_token_where_the_service_redirects_it(cache, env, hosts):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    service, other = hosts
    env.setenv("MLFLOW_TRACKING_URI", service.url)
    env.setenv("MLFLOW_TRACKING_AUTH", "gcp")
    env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    env.setattr(tokens, "_default_cache", cache)
    with pytest.raises(MlflowException, match="401"):
        MlflowClient().get_experiment("0")
    assert service.seen[0][1].startswith("Bearer ")  # the plugin was in use
    assert [auth_header for _, auth_header in other.seen] == [None]
    assert cache.fetches == 1


def test_a_same_origin_redirect_still_gets_its_401_retry(cache, env, hosts):
    service, _ = hosts
    env.setenv("MLFLOW_TRACKING_URI", service.url)
    resp = requests.get(f"{service.url}/here", auth=auth.GcpAuth(cache), timeout=10)
    assert resp.status_code == 200
    sent = [a for p, a in service.seen if p == "/private"]
    assert len(sent) == 2 and all(a.startswith("Bearer ") for a in sent)
    assert cache.fetches == 2  # the token was refreshed for the service's own 401


def test_tokens_go_only_to_the_tracking_uris_origin(cache, env, hosts, caplog):
    service, other = hosts
    env.setenv("MLFLOW_TRACKING_URI", f"{service.url}/some/prefix")
    with caplog.at_level(logging.WARNING, logger=auth.__name__):
        resp = requests.get(f"{other.url}/api", auth=auth.GcpAuth(cache), timeout=10)
        requests.get(f"{other.url}/api", auth=auth.GcpAuth(cache), timeout=10)
    assert resp.status_code == 401
    assert other.seen == [("/api", None), ("/api", None)]
    assert cache.fetches == 0
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"not sending a Google ID token to {other.url}: the service is "
                        f"{service.url} (list other origins in {auth.TOKEN_ORIGINS_ENV})"]
    assert requests.get(f"{service.url}/api", auth=auth.GcpAuth(cache), timeout=10).ok
    assert service.seen[-1][1].startswith("Bearer ")


def test_other_origins_can_be_listed(cache, env, hosts):
    service, other = hosts
    env.setenv("MLFLOW_TRACKING_URI", service.url)
    env.setenv(auth.TOKEN_ORIGINS_ENV, f" {other.url.upper()}/ignored/path , ")
    requests.get(f"{other.url}/api", auth=auth.GcpAuth(cache), timeout=10)
    assert other.seen[0][1].startswith("Bearer ")
    # ... or given to the auth object itself.
    env.delenv(auth.TOKEN_ORIGINS_ENV)
    requests.get(f"{other.url}/api", auth=auth.GcpAuth(cache, origins=(other.url,)), timeout=10)
    assert other.seen[1][1].startswith("Bearer ")


def test_mlflows_own_tracking_uri_names_the_service(cache, env, hosts):
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    service, other = hosts
    # The raw global, not get_tracking_uri(): restoring its resolved default would pin it for
    # every later test, so the fluent API would ignore their MLFLOW_TRACKING_URI.
    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(service.url)
    try:
        requests.get(f"{other.url}/api", auth=auth.GcpAuth(cache), timeout=10)
        requests.get(f"{service.url}/api", auth=auth.GcpAuth(cache), timeout=10)
    finally:
        mlflow.set_tracking_uri(previous)
    assert other.seen == [("/api", None)]
    assert service.seen[0][1].startswith("Bearer ")


def test_a_bad_origin_setting_is_named(env):
    env.setenv(auth.TOKEN_ORIGINS_ENV, "mlflow.example.com")
    with pytest.raises(tokens.TokenError, match=f"{auth.TOKEN_ORIGINS_ENV}: 'mlflow.example.com' "
                       "is not an http"):
        auth.service_origins()


@pytest.mark.parametrize("url, origin", [
    ("https://X.run.app/api/2.0?x=1", "https://x.run.app"),
    ("https://x.run.app:443", "https://x.run.app"),
    ("http://127.0.0.1:5000/", "http://127.0.0.1:5000"),
    ("HTTP://[::1]:80/x", "http://[::1]"),
    ("file:///tmp/mlruns", None),
    ("sqlite:///mlflow.db", None),
    ("databricks", None),
    ("https://x:notaport/", None),
    (None, None),
])
def test_origin_of(url, origin):
    assert auth.origin_of(url) == origin

