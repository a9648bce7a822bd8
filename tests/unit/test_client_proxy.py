"""The UI proxy's HTTP mechanics against a small local upstream that reports what it received."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from mlflow_gcp.client import tokens
from mlflow_gcp.client.proxy import ProxyError, UiProxy
from tests.support.clock import FakeClock
from tests.support.httpserver import BackgroundServer, QuietHandler
from tests.support.idp import LocalIdentityProvider

SA = "viewer@test-project.iam.gserviceaccount.com"


class Upstream(BackgroundServer):
    """Echoes the request line and headers as JSON; /redirect and /chunked show relaying."""

    class handler_class(QuietHandler):
        def _echo(self) -> None:
            body = b""
            if length := int(self.headers.get("Content-Length", 0)):
                body = self.rfile.read(length)
            if self.path == "/redirect":
                origin = self.server.owner.url
                return self.send_body(302, b"", headers={"Location": f"{origin}/next?x=1"})
            if self.path == "/chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for piece in (b"first,", b"second"):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
                return
            seen = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                    "body": len(body)}
            self.send_body(200, json.dumps(seen).encode(), "application/json")

        do_GET = do_POST = _echo


@pytest.fixture
def proxy(tmp_path):
    clock = FakeClock()
    with LocalIdentityProvider(clock=clock) as idp, Upstream() as upstream:
        key = idp.write_key_file(tmp_path / "key.json", SA)
        cache = tokens.TokenCache(lambda: tokens.KeyFileSource(str(key)), clock=clock)
        p = UiProxy(upstream.url, 0, cache=cache).start()
        p.idp, p.upstream_server = idp, upstream
        try:
            yield p
        finally:
            p.shutdown()


def test_requests_get_a_token_for_the_upstream_and_its_host(proxy):
    seen = requests.get(f"{proxy.url}/ajax-api/2.0/mlflow/runs/search?a=1",
                        headers={"Authorization": "Bearer from-the-browser"}, timeout=10).json()
    assert seen["path"] == "/ajax-api/2.0/mlflow/runs/search?a=1"
    assert seen["headers"]["Host"] == f"127.0.0.1:{proxy.upstream_server.port}"
    token = seen["headers"]["Authorization"].removeprefix("Bearer ")
    assert tokens.jwt_claims(token)["aud"] == proxy.upstream_server.url
    assert tokens.jwt_claims(token)["email"] == SA


def test_bodies_and_expect_continue(proxy):
    seen = requests.post(f"{proxy.url}/upload", data=b"z" * 300_000,
                         headers={"Expect": "100-continue"}, timeout=10).json()
    assert seen["body"] == 300_000
    assert "Expect" not in seen["headers"]


def test_redirects_to_the_service_come_back_to_the_proxy(proxy):
    resp = requests.get(f"{proxy.url}/redirect", allow_redirects=False, timeout=10)
    assert resp.status_code == 302
    assert resp.headers["Location"] == f"{proxy.url}/next?x=1"


def test_a_chunked_response_is_relayed_whole(proxy):
    resp = requests.get(f"{proxy.url}/chunked", timeout=10)
    assert resp.content == b"first,second"
    assert resp.headers["Transfer-Encoding"] == "chunked"


def test_keep_alive_reuses_one_token(proxy):
    with requests.Session() as s:
        for _ in range(5):
            assert s.get(f"{proxy.url}/x", timeout=10).status_code == 200
    assert proxy.cache.fetches == 1 == proxy.idp.issued_count()


def test_an_unreachable_service_is_a_502_naming_it(proxy):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    other = UiProxy(dead, 0, cache=proxy.cache, audience=proxy.audience).start()
    try:
        resp = requests.get(f"{other.url}/", timeout=10)
    finally:
        other.shutdown()
    assert resp.status_code == 502
    assert resp.text.startswith(f"mlflow-gcp ui: cannot reach {dead}:")


def test_not_a_url():
    with pytest.raises(ProxyError, match="not a service URL"):
        UiProxy("mlflow-tracking.run.app", 0)
