"""The UI proxy's HTTP mechanics against a small local upstream that reports what it received."""

from __future__ import annotations

import json
import logging
import socket

import pytest
import requests

from mlflow_gcp.client import proxy_guard, tokens
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
        # A browser that opened the address `mlflow-gcp ui` printed.
        p.http = requests.Session()
        try:
            assert p.http.get(p.login_url, timeout=10).status_code == 200
            yield p
        finally:
            p.http.close()
            p.shutdown()


def test_requests_get_a_token_for_the_upstream_and_its_host(proxy):
    seen = proxy.http.get(f"{proxy.url}/ajax-api/2.0/mlflow/runs/search?a=1",
                          headers={"Authorization": "Bearer from-the-browser"}, timeout=10).json()
    assert seen["path"] == "/ajax-api/2.0/mlflow/runs/search?a=1"
    assert seen["headers"]["Host"] == f"127.0.0.1:{proxy.upstream_server.port}"
    token = seen["headers"]["Authorization"].removeprefix("Bearer ")
    assert tokens.jwt_claims(token)["aud"] == proxy.upstream_server.url
    assert tokens.jwt_claims(token)["email"] == SA


def test_bodies_and_expect_continue(proxy):
    seen = proxy.http.post(f"{proxy.url}/upload", data=b"z" * 300_000,
                           headers={"Expect": "100-continue"}, timeout=10).json()
    assert seen["body"] == 300_000
    assert "Expect" not in seen["headers"]


def test_redirects_to_the_service_come_back_to_the_proxy(proxy):
    resp = proxy.http.get(f"{proxy.url}/redirect", allow_redirects=False, timeout=10)
    assert resp.status_code == 302
    assert resp.headers["Location"] == f"{proxy.url}/next?x=1"


def test_a_chunked_response_is_relayed_whole(proxy):
    resp = proxy.http.get(f"{proxy.url}/chunked", timeout=10)
    assert resp.content == b"first,second"
    assert resp.headers["Transfer-Encoding"] == "chunked"


def test_keep_alive_reuses_one_token(proxy):
    for _ in range(5):
        assert proxy.http.get(f"{proxy.url}/x", timeout=10).status_code == 200
    assert proxy.cache.fetches == 1 == proxy.idp.issued_count()


def test_an_unreachable_service_is_a_502_naming_it(proxy):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    other = UiProxy(dead, 0, cache=proxy.cache, audience=proxy.audience).start()
    try:
        resp = requests.get(f"{other.url}/", timeout=10,
                            cookies={other.guard.cookie_name: other.token})
    finally:
        other.shutdown()
    assert resp.status_code == 502
    assert resp.text.startswith(f"mlflow-gcp ui: cannot reach {dead}:")


def test_not_a_url():
    with pytest.raises(ProxyError, match="not a service URL"):
        UiProxy("mlflow-tracking.run.app", 0)


def test_the_login_answer_sets_a_strict_cookie_and_moves_on_without_the_secret(proxy):
    assert proxy.cache.fetches == 0  # logging in reached neither the service nor Google
    resp = requests.get(f"{proxy.login_url}&x=1", timeout=10, allow_redirects=False)
    assert resp.status_code == 200
    cookie = resp.headers["Set-Cookie"]
    assert cookie == (f"{proxy.guard.cookie_name}={proxy.token}; Path=/; HttpOnly; "
                      "SameSite=Strict")
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    assert 'location.replace("/?x=1" + location.hash)' in resp.text
    assert 'content="0;url=/?x=1"' in resp.text and proxy.token not in resp.text
    assert proxy.cache.fetches == 0


def test_the_service_gets_no_origin_referer_or_cookie_from_the_browser(proxy):
    seen = proxy.http.post(
        f"{proxy.url}/ajax-api/2.0/mlflow/experiments/create", data=b"{}",
        headers={"Origin": proxy.url, "Referer": proxy.login_url, "Sec-Fetch-Site": "same-origin",
                 "Cookie": f"_xsrf=other-app; {proxy.guard.cookie_name}={proxy.token}"},
        timeout=10).json()
    headers = {name.lower() for name in seen["headers"]}
    assert {"origin", "referer", "cookie"} & headers == set()
    assert proxy.token not in json.dumps(seen)
    assert seen["headers"]["Host"] == f"127.0.0.1:{proxy.upstream_server.port}"


def test_a_refused_upload_leaves_the_connection_usable(proxy):
    resp = proxy.http.post(f"{proxy.url}/upload", data=b"z" * 1000, timeout=10,
                           headers={"Host": "evil.example"})
    assert resp.status_code == 403
    assert proxy.http.post(f"{proxy.url}/upload", data=b"z" * 10, timeout=10).json()["body"] == 10


def test_the_secret_is_in_no_log_line(proxy, caplog):
    with caplog.at_level(logging.DEBUG, logger="mlflow_gcp"):
        requests.get(proxy.login_url, timeout=10)
        requests.get(f"{proxy.url}/x?token=guessed-wrong", timeout=10)
        proxy.http.get(f"{proxy.url}/x", headers={"Referer": proxy.login_url}, timeout=10)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "token=***" in text and "guessed-wrong" not in text
    assert proxy.token not in text


def test_the_proxy_listens_on_loopback_only():
    with pytest.raises(ProxyError, match="loopback address only, not '0.0.0.0'"):
        UiProxy("https://x.run.app", 0, bind="0.0.0.0")


def test_an_ipv6_loopback_proxy_answers_as_its_bracketed_address():
    try:
        p = UiProxy("https://x.run.app", 0, bind="::1")
    except ProxyError:
        pytest.skip("no IPv6 loopback here")
    p.shutdown()
    assert p.url == f"http://[::1]:{p.port}"
    assert p.guard.hosts == {f"[::1]:{p.port}", f"localhost:{p.port}"}
    assert p.login_url == f"http://[::1]:{p.port}/?token={p.token}"


@pytest.mark.parametrize("headers, refused", [
    ({"Host": "127.0.0.1:5000"}, None),
    ({"Host": "LOCALHOST:5000"}, None),
    ({"Host": "127.0.0.1:5001"}, "refused Host '127.0.0.1:5001'"),
    ({"Host": "rebind.evil.example:5000"}, "refused Host 'rebind.evil.example:5000'"),
    ({}, "refused Host '(none)'"),
    ({"Host": "127.0.0.1:5000", "Origin": "http://127.0.0.1:5000"}, None),
    ({"Host": "127.0.0.1:5000", "Origin": "http://localhost:5000"}, "cross-origin request from"),
    ({"Host": "127.0.0.1:5000", "Origin": "null"}, "cross-origin request from 'null'"),
    ({"Host": "127.0.0.1:5000", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}, None),
    ({"Host": "127.0.0.1:5000", "Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}, None),
    ({"Host": "127.0.0.1:5000", "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"},
     "refused a same-site request"),
    ({"Host": "127.0.0.1:5000", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
      "Sec-Fetch-Dest": "document"}, None),
    ({"Host": "127.0.0.1:5000", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
      "Sec-Fetch-Dest": "iframe"}, "refused a cross-site request"),
])
def test_guard_verdicts(headers, refused):
    verdict = proxy_guard.Guard("127.0.0.1", 5000, "s3cret").refusal("GET", headers)
    assert verdict == refused if refused is None else refused in verdict


def test_guard_on_port_80_accepts_a_host_without_port():
    guard = proxy_guard.Guard("127.0.0.1", 80, "s3cret")
    assert guard.refusal("GET", {"Host": "localhost", "Origin": "http://localhost"}) is None
    assert guard.refusal("POST", {"Host": "127.0.0.1:80"}) is None


def test_a_cross_site_form_post_is_not_a_navigation_the_guard_lets_through():
    guard = proxy_guard.Guard("127.0.0.1", 5000, "s3cret")
    headers = {"Host": "127.0.0.1:5000", "Sec-Fetch-Site": "cross-site",
               "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert "refused a cross-site request" in guard.refusal("POST", headers)


def test_a_script_may_send_the_secret_as_a_bearer_token(proxy):
    url = f"{proxy.url}/ajax-api/2.0/mlflow/runs/search"
    seen = requests.get(url, headers={"Authorization": f"Bearer {proxy.token}"}, timeout=10)
    # Let in, and the service gets the proxy's ID token, not the secret.
    assert seen.status_code == 200 and proxy.token not in seen.text
    assert tokens.jwt_claims(seen.json()["headers"]["Authorization"].removeprefix("Bearer "))
    wrong = requests.get(url, headers={"Authorization": "Bearer not-the-secret"}, timeout=10)
    assert wrong.status_code == 403 and wrong.text == proxy_guard.WRONG_TOKEN + "\n"
