"""Attacks on `mlflow-gcp ui`'s proxy, replayed against the real MLflow server behind the front.

Each request carries the headers a browser sends in that attack (a DNS-rebinding page, a page on
another site or another localhost port, a browser that never opened the printed address); the
last test runs the attack page in headless Chromium. Before the fix each one read or wrote the
user's experiments (see docs/security.md).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid

import pytest
import requests

from mlflow_gcp.cli.client_cmds import write_opener
from mlflow_gcp.client import proxy_guard
from mlflow_gcp.client.proxy import UiProxy
from tests.integration.test_ui_proxy import ARTIFACTS_DIR, logged_in
from tests.support.chromium import Browser, find_chromium
from tests.support.httpserver import BackgroundServer, QuietHandler

pytestmark = pytest.mark.slow

SEARCH = "/ajax-api/2.0/mlflow/experiments/search?max_results=1000"
CREATE = "/ajax-api/2.0/mlflow/experiments/create"


@pytest.fixture
def ui(stack, plugin):
    proxy = UiProxy(stack.front.url, 0, cache=plugin).start()
    yield proxy
    proxy.shutdown()


@pytest.fixture
def mlflow(stack, plugin):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.front.url)


def _refused(resp: requests.Response, why: str) -> None:
    assert resp.status_code == 403, resp.text[:300]
    assert resp.text.startswith("mlflow-gcp ui: ") and why in resp.text
    assert resp.text.count("\n") == 1  # one line saying why
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_a_dns_rebinding_host_is_refused(stack, ui):
    # What a page at rebind.evil.example sends once its name resolves to 127.0.0.1.
    rebound = {"Host": f"rebind.evil.example:{ui.port}"}
    _refused(requests.get(ui.url + SEARCH, headers=rebound, timeout=30),
             f"refused Host 'rebind.evil.example:{ui.port}'")
    # The Host check alone refuses it, even for a client that holds the session.
    http = logged_in(ui)
    _refused(http.get(ui.url + SEARCH, headers=rebound, timeout=30), "refused Host")
    _refused(http.get(ui.url + SEARCH, headers={"Host": f"127.0.0.1:{ui.port + 1}"}, timeout=30),
             "refused Host")
    assert stack.front.count() == 0  # nothing reached the service


def test_a_page_on_another_localhost_port_cannot_write(stack, ui, mlflow):
    # Same-site to the browser (ports do not count), so it even carries the SameSite cookie.
    http = logged_in(ui)
    evil = f"http://127.0.0.1:{ui.port + 1}"
    name = f"planted-{uuid.uuid4().hex[:6]}"
    preflight = http.options(ui.url + CREATE, timeout=30, headers={
        "Origin": evil, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type", "Sec-Fetch-Site": "same-site",
        "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"})
    _refused(preflight, f"cross-origin request from '{evil}'")
    post = http.post(ui.url + CREATE, json={"name": name}, timeout=30, headers={
        "Origin": evil, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors",
        "Sec-Fetch-Dest": "empty"})
    _refused(post, "cross-origin request")
    # A browser without Sec-Fetch-* headers still sends Origin on a POST.
    _refused(http.post(ui.url + CREATE, json={"name": name}, headers={"Origin": evil},
                       timeout=30), "cross-origin request")
    assert stack.front.count() == 0
    assert mlflow.get_experiment_by_name(name) is None


def test_cross_site_requests_are_refused_but_top_level_links_are_not(stack, ui):
    http = logged_in(ui)
    script_include = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
                      "Sec-Fetch-Dest": "script"}
    _refused(http.get(ui.url + SEARCH, headers=script_include, timeout=30),
             "refused a cross-site request")
    framed = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
              "Sec-Fetch-Dest": "iframe"}
    _refused(http.get(ui.url + "/", headers=framed, timeout=30), "refused a cross-site request")
    form_post = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                 "Sec-Fetch-Dest": "document", "Content-Type": "text/plain"}
    _refused(http.post(ui.url + CREATE, data='{"name": "x"}', headers=form_post, timeout=30),
             "refused a cross-site request")
    assert stack.front.count() == 0
    # A link from elsewhere opens the UI (the page that then loads is the proxy's own).
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
            "Sec-Fetch-Dest": "document"}
    assert http.get(ui.url + "/", headers=link, timeout=30).status_code == 200


def test_without_the_printed_address_nothing_gets_in(stack, ui):
    _refused(requests.get(ui.url + SEARCH, timeout=30), proxy_guard.NO_SESSION)
    _refused(requests.get(ui.url + "/", timeout=30), "open the address ending in ?token=")
    stale = {ui.guard.cookie_name: "a-secret-from-an-earlier-run"}
    _refused(requests.get(ui.url + SEARCH, cookies=stale, timeout=30), proxy_guard.WRONG_TOKEN)
    _refused(requests.get(f"{ui.url}/?token=guessed", timeout=30), proxy_guard.WRONG_TOKEN)
    assert stack.front.count() == 0
    assert ui.token not in requests.get(ui.url + "/", timeout=30).text


def test_the_printed_address_lets_the_ui_read_and_write(stack, ui, mlflow):
    http = logged_in(ui)
    page = http.get(ui.url + "/", timeout=30)
    assert page.status_code == 200 and "<title>MLflow</title>" in page.text
    name = f"from-the-ui-{uuid.uuid4().hex[:6]}"
    # What the UI's own page sends: its own Origin, same-origin.
    created = http.post(ui.url + CREATE, json={"name": name}, timeout=30, headers={
        "Origin": ui.url, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors",
        "Sec-Fetch-Dest": "empty", "Referer": f"{ui.url}/"})
    assert created.status_code == 200, created.text
    assert mlflow.get_experiment_by_name(name).experiment_id == created.json()["experiment_id"]
    listed = http.get(ui.url + SEARCH, timeout=30).json()["experiments"]
    assert name in {e["name"] for e in listed}


class AttackPage(BackgroundServer):
    """A page on another 127.0.0.1 port that tries to read and write through the proxy."""

    def __init__(self, proxy_url: str, name: str):
        self.proxy_url, self.name = proxy_url, name

    class handler_class(QuietHandler):
        def do_GET(self) -> None:
            owner = self.server.owner
            script = ATTACK_SCRIPT % {"proxy": json.dumps(owner.proxy_url),
                                      "name": json.dumps(owner.name),
                                      "search": json.dumps(SEARCH), "create": json.dumps(CREATE)}
            self.send_body(200, f"<!doctype html><title>elsewhere</title><script>{script}"
                                "</script>".encode(), "text/html")


ATTACK_SCRIPT = """
window.result = null;
(async () => {
  const proxy = %(proxy)s, name = %(name)s, out = {};
  async function attempt(key, url, init) {
    try {
      const r = await fetch(proxy + url, init);
      out[key] = r.type === "opaque" ? "opaque" : "read " + r.status + ": " + await r.text();
    } catch (e) { out[key] = "blocked"; }
  }
  await attempt("read", %(search)s, {credentials: "include"});
  await attempt("read-anonymous", %(search)s, {credentials: "omit"});
  await attempt("create", %(create)s, {method: "POST", credentials: "include",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({name: name + "-cors"})});
  await attempt("create-blind", %(create)s, {method: "POST", mode: "no-cors",
    credentials: "include", headers: {"Content-Type": "text/plain"},
    body: JSON.stringify({name: name + "-blind"})});
  window.result = JSON.stringify(out);
})();
"""


def test_in_chromium_another_localhost_page_reads_nothing_while_the_user_gets_in(
        stack, ui, mlflow, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (`apt-get install chromium`; .ci/run does it)")
    name = f"secret-experiment-{uuid.uuid4().hex[:6]}"
    mlflow.create_experiment(name)
    opener = write_opener(ui.login_url)
    browser = Browser(chromium, tmp_path / "chromium-profile")
    try:
        # The user: `mlflow-gcp ui` opens its file, which goes on to the printed address.
        browser.navigate(opener.as_uri() + "#/experiments")
        try:
            browser.wait_for_text(name)
        finally:
            browser.screenshot(ARTIFACTS_DIR / "ui-logged-in.png")
        assert "token=" not in browser.evaluate("location.href")
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: no script reads it

        # The attacker: a page on another port of the same loopback address, same browser.
        with AttackPage(ui.url, name) as page:
            browser.navigate(page.url)
            result = None
            for _ in range(120):
                if result := browser.evaluate("window.result"):
                    break
                time.sleep(0.5)
            assert result, "the attack page did not finish"
            outcome = json.loads(result)
        assert outcome == {"read": "blocked", "read-anonymous": "blocked", "create": "blocked",
                           "create-blind": "opaque"}, outcome
        assert mlflow.get_experiment_by_name(f"{name}-cors") is None
        assert mlflow.get_experiment_by_name(f"{name}-blind") is None

        # And the user's own tab still works (typed address: the Strict cookie goes along).
        browser.navigate(f"{ui.url}/#/experiments")
        browser.wait_for_text(name)
    finally:
        browser.close()
        shutil.rmtree(opener.parent)
