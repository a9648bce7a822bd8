"""The UI's first load in headless Chromium: bytes on the wire and time to the experiment list.

A fresh browser profile (empty cache) opens `<server>/#/experiments`, as a user's first visit;
the page counts as shown when the experiment the bench created is listed. The browser reaches
the server through bench/shaper.py, which counts every byte the server sent (headers, bodies as
sent, compressed or not) until the network was quiet for a second; for the timed load it also
plays a slow link.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.shaper import Shaper
from tests.support.chromium import Browser, find_chromium

EXPERIMENT = "bench-ui-list"  # the experiment the page must list (created by the bench)
QUIET_S = 1.0  # no request in flight for this long: the first load is over


@dataclass
class Load:
    seconds: float  # navigation to the experiment list on the page
    wire_bytes: int  # everything the server sent the browser, as it crossed the link
    body_bytes: int  # the bodies decoded (Chromium's count)
    requests: int


def available() -> bool:
    return find_chromium() is not None


def first_load(port: int, experiment: str, mbit: float = float("inf"), rtt_ms: float = 0.0) -> Load:
    """Open the experiments page of the server on 127.0.0.1:`port` in a new headless Chromium
    with an empty cache, over a `mbit` / `rtt_ms` link (default: loopback, only counted)."""
    shaper = Shaper(port, mbit=mbit, rtt_ms=rtt_ms).start()
    try:
        load = _first_load(shaper.url, experiment)
    finally:
        shaper.stop()
    load.wire_bytes = shaper.down.bytes
    return load


def _first_load(url: str, experiment: str, timeout: float = 180.0) -> Load:
    with tempfile.TemporaryDirectory(prefix="bench-chromium-") as tmp:
        browser = Browser(find_chromium(), Path(tmp) / "profile")
        try:
            browser.call("Network.enable")
            browser.call("Network.setCacheDisabled", cacheDisabled=False)
            browser.events.clear()
            began = time.perf_counter()
            browser.navigate(f"{url}/#/experiments")
            deadline = began + timeout
            shown = None
            while time.perf_counter() < deadline:
                text = browser.evaluate("document.body ? document.body.innerText : ''") or ""
                if experiment in text:
                    shown = time.perf_counter() - began
                    break
                time.sleep(0.05)
            if shown is None:
                raise TimeoutError(f"{experiment!r} not listed after {timeout:.0f} s: {text[:300]!r}")
            return _settle(browser, shown, deadline)
        finally:
            browser.close()


def _settle(browser: Browser, shown: float, deadline: float) -> Load:
    """Wait until the network was quiet for QUIET_S (no DevTools network event), then add up
    what the page took. (Not "no request pending": a worker's script is fetched by the worker,
    and the page never sees that request finish.)"""
    seen, quiet_since = len(browser.events), time.perf_counter()
    while time.perf_counter() < deadline:
        time.sleep(0.1)
        browser.evaluate("1")  # reads the events that arrived meanwhile
        now = time.perf_counter()
        if len(browser.events) != seen:
            seen, quiet_since = len(browser.events), now
        elif now - quiet_since >= QUIET_S:
            break
    body = count = 0
    for event in browser.events:
        if event["method"] == "Network.loadingFinished":
            count += 1
        elif event["method"] == "Network.dataReceived":
            body += int(event["params"].get("dataLength", 0))
    return Load(seconds=shown, wire_bytes=0, body_bytes=body, requests=count)
