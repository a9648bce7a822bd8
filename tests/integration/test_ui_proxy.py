"""`mlflow-gcp ui`: the local authenticated proxy, with the real MLflow UI in headless Chromium."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest
import requests

from mlflow_gcp.client.proxy import UiProxy
from tests.integration.conftest import INVOKER
from tests.support.chromium import Browser, find_chromium
from tests.support.clientenv import clean_env

pytestmark = pytest.mark.slow

ARTIFACTS_DIR = Path(__file__).resolve().parents[2] / "test-artifacts"
MIB = 1024 * 1024


FIRST_LINE = re.compile(r"at (http://127\.0\.0\.1:\d+)/\?token=([\w-]{43}) \(Ctrl-C to stop\)$")


def _start_ui(stack, **env) -> tuple[subprocess.Popen, str, str]:
    """`mlflow-gcp ui --no-browser`: the process, its address, and the address that logs in."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow_gcp", "ui", "--no-browser", "--port", "0",
         "--url", stack.front.url],
        env=clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline().strip()
    match = FIRST_LINE.search(line)
    if not match:
        proc.kill()
        raise AssertionError(f"unexpected first line {line!r}; stderr: {proc.stderr.read()}")
    assert proc.stdout.readline().startswith("Open that address in your browser;")
    return proc, match.group(1), f"{match.group(1)}/?token={match.group(2)}"


def logged_in(proxy: UiProxy) -> requests.Session:
    """A client holding the session cookie, as a browser that opened the printed address."""
    session = requests.Session()
    assert session.get(proxy.login_url, timeout=30).status_code == 200
    return session


def _stop_ui(proc: subprocess.Popen) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_the_ui_shows_the_logged_experiment_in_headless_chromium(stack, plugin, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (`apt-get install chromium`; .ci/run does it)")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.front.url)
    name = f"ui-experiment-{uuid.uuid4().hex[:6]}"
    exp_id = client.create_experiment(name)
    run = client.create_run(exp_id, run_name="browser-visible-run")
    client.log_param(run.info.run_id, "optimizer", "adam")
    client.log_metric(run.info.run_id, "accuracy", 0.93)
    client.set_terminated(run.info.run_id)
    logged = stack.front.count()

    ui, ui_url, login_url = _start_ui(stack, MLFLOW_GCP_CREDENTIALS_FILE=str(stack.key_file))
    browser = None
    try:
        browser = Browser(chromium, tmp_path / "chromium-profile")
        browser.navigate(f"{login_url}#/experiments")
        try:
            page = browser.wait_for_text(name)
        finally:
            shot = browser.screenshot(ARTIFACTS_DIR / "ui.png")
            print(f"\nUI screenshot: {shot}")
        assert "Experiments" in page
        browser.navigate(f"{ui_url}/#/experiments/{exp_id}/runs")
        try:
            browser.wait_for_text("browser-visible-run", timeout=45)
        finally:
            shot = browser.screenshot(ARTIFACTS_DIR / "ui-runs.png")
            print(f"UI screenshot: {shot}")
    finally:
        if browser is not None:
            browser.close()
        code, out, err = _stop_ui(ui)
    assert code == 0 and "Stopped." in out
    assert login_url.split("=")[1] not in out + err  # printed once, on the first line only

    from_browser = stack.front.log[logged:]
    assert len(from_browser) > 5  # the page, its scripts and its API calls all crossed the front
    assert {s.caller for s in from_browser} == {INVOKER}
    assert not [s for s in from_browser if s.status in (401, 403, 413)]


def test_the_proxy_streams_large_bodies_both_ways_in_bounded_memory(stack, plugin, tmp_path):
    big = tmp_path / "weights.bin"
    with open(big, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(MIB))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    proxy = UiProxy(stack.front.url, 0, cache=plugin).start()
    path = f"{uuid.uuid4().hex}/weights.bin"
    url = f"{proxy.url}/api/2.0/mlflow-artifacts/artifacts/{path}"
    http = logged_in(proxy)
    try:
        tracemalloc.start()
        with open(big, "rb") as body:
            put = http.put(url, data=body, timeout=300)
        assert put.status_code == 200, put.text
        got = hashlib.sha256()
        with http.get(url, stream=True, timeout=300) as resp:
            assert resp.status_code == 200
            for piece in resp.iter_content(64 * 1024):
                got.update(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        proxy.shutdown()
    assert got.hexdigest() == digest
    # 24 MiB went up and came back through the proxy and the front, never held whole.
    print(f"\npeak traced memory while moving 2 x 24 MiB: {peak / MIB:.1f} MiB")
    assert peak < 8 * MIB
    stored = stack.server.workdir / "artifacts" / path
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest


def test_the_proxy_keeps_working_past_token_expiry(stack, plugin):
    proxy = UiProxy(stack.front.url, 0, cache=plugin).start()
    url = f"{proxy.url}/api/2.0/mlflow/experiments/search?max_results=1"
    http = logged_in(proxy)
    try:
        assert http.get(url, timeout=30).status_code == 200
        stack.clock.advance(3700)  # an hour later, for the proxy and the front
        assert http.get(url, timeout=30).status_code == 200
        # Now the front runs ahead of the proxy's clock: a 401, retried with a new token.
        plugin.clock = lambda: stack.clock() - 7200
        stack.clock.advance(3700)
        assert http.get(url, timeout=30).status_code == 200
    finally:
        proxy.shutdown()
    assert plugin.fetches == 3
    assert stack.front.count(401) == 1 and stack.front.count(200) == 3


def test_mlflows_client_can_use_the_proxy_with_the_secret_as_its_token(stack, plugin, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    proxy = UiProxy(stack.front.url, 0, cache=plugin).start()
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")  # the proxy signs; the client needs no plugin
    try:
        with pytest.raises(MlflowException, match="no session"):
            MlflowClient(tracking_uri=proxy.url).search_experiments()
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", proxy.token)
        name = f"via-proxy-{uuid.uuid4().hex[:6]}"
        exp_id = MlflowClient(tracking_uri=proxy.url).create_experiment(name)
    finally:
        proxy.shutdown()
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "gcp")
    assert MlflowClient(tracking_uri=stack.front.url).get_experiment(exp_id).name == name


def test_ui_without_credentials_says_so_and_exits(stack):
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow_gcp", "ui", "--no-browser", "--port", "0",
         "--url", stack.front.url],
        env=clean_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: no Google credentials found")
    assert "MLFLOW_GCP_CREDENTIALS_FILE" in proc.stderr
    assert stack.front.count() == 0


def test_ui_on_a_busy_port_says_so(stack, plugin):
    first = UiProxy(stack.front.url, 0, cache=plugin)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mlflow_gcp", "ui", "--no-browser", "--port", str(first.port),
             "--url", stack.front.url],
            env=clean_env(MLFLOW_GCP_CREDENTIALS_FILE=str(stack.key_file)),
            capture_output=True, text=True, timeout=60,
        )
    finally:
        first.shutdown()
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in proc.stderr
    assert "--port" in proc.stderr


def test_ui_opens_the_browser_unless_told_not_to(stack, tmp_path):
    # Python's webbrowser honours $BROWSER: a recorder instead of a real browser.
    seen = tmp_path / "opened.txt"
    recorder = tmp_path / "browser.sh"
    recorder.write_text(f'#!/bin/sh\necho "$1" >> {seen}\n')
    recorder.chmod(0o755)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow_gcp", "ui", "--port", "0", "--url", stack.front.url],
        env=clean_env(MLFLOW_GCP_CREDENTIALS_FILE=str(stack.key_file),
                      BROWSER=f"{recorder} %s", DISPLAY=""),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first, second = proc.stdout.readline().strip(), proc.stdout.readline()
        match = FIRST_LINE.search(first)
        login_url = f"{match.group(1)}/?token={match.group(2)}"
        assert second.startswith("Opening it in your browser;")
        for _ in range(100):
            if seen.exists() and seen.read_text().strip():
                break
            time.sleep(0.1)
        # The browser gets a file only this user can read, not the secret on its command line.
        (opened,) = seen.read_text().split()
        assert opened.startswith("file:///") and login_url not in opened
        page = Path(opened.removeprefix("file://"))
        assert page.stat().st_mode & 0o777 == 0o600
        assert page.parent.stat().st_mode & 0o777 == 0o700
        assert f'content="0;url={login_url}"' in page.read_text()
    finally:
        code, _, _ = _stop_ui(proc)
    assert code == 0
    assert not page.parent.exists()  # removed when the proxy stops
