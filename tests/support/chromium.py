"""Headless Chromium driven over the DevTools protocol, with a minimal stdlib websocket client.

Uses the system's Chromium (Debian's `chromium`, which .ci/run installs); nothing is downloaded.
`find_chromium()` returns None where there is none, so tests can skip with a reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,900", "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


class WebSocket:
    """Just enough of RFC 6455 for DevTools: masked text frames out, whole messages in."""

    def __init__(self, url: str, timeout: float = 30):
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"websocket handshake refused: {head[:80]!r}")

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("websocket closed")
            buf += chunk
        return buf

    def send(self, text: str) -> None:
        payload = text.encode()
        header = bytes([0x81])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def recv(self) -> str:
        message = b""
        while True:
            b1, b2 = self._read(2)
            opcode, n = b1 & 0x0F, b2 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            data = self._read(n)
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode in (0x9, 0xA):  # ping / pong: DevTools does not send them in practice
                continue
            message += data
            if b1 & 0x80:
                return message.decode()

    def close(self) -> None:
        self.sock.close()


# What DevTools answers while the page is between two documents: a navigation from about:blank to
# a site moves the page to a new renderer process (site isolation), and a call sent during the
# swap fails once (seen in a full CI run: Runtime.evaluate, then Page.captureScreenshot).
_SWAP_ERRORS = ("Inspected target navigated or closed", "Not attached to an active page",
                "Cannot find context with specified id", "Execution context was destroyed")


def _between_documents(err: RuntimeError) -> bool:
    return any(marker in str(err) for marker in _SWAP_ERRORS)


class Browser:
    """One headless Chromium with one page; `evaluate`, `navigate`, `screenshot`."""

    def __init__(self, executable: str, profile_dir: Path, timeout: float = 60):
        self.profile_dir = Path(profile_dir)
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        # A file, not a pipe: Chromium logs a lot, and an unread pipe would block it.
        self.log_path = self.profile_dir.parent / f"{self.profile_dir.name}-chromium.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile_dir}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True,
        )
        port = self._devtools_port(timeout)
        self.ws = WebSocket(self._page_ws(port, timeout), timeout=timeout)
        self._next_id = 0
        # DevTools events seen while waiting for answers (e.g. Network.* once enabled).
        self.events: list[dict] = []

    def _devtools_port(self, timeout: float) -> int:
        marker = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.log_path.read_text()[-2000:]}")
            if marker.exists() and (text := marker.read_text().split()):
                return int(text[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    @staticmethod
    def _page_ws(port: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise TimeoutError("chromium opened no page")

    def call(self, method: str, **params):
        self._next_id += 1
        self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
            elif msg.get("id") == self._next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for_text(self, text: str, timeout: float = 90) -> str:
        """Poll the page's visible text until it contains `text`; return that text."""
        deadline = time.monotonic() + timeout
        body = ""
        while time.monotonic() < deadline:
            try:
                body = self.evaluate("document.body ? document.body.innerText : ''") or ""
            except RuntimeError as err:
                if not _between_documents(err):
                    raise
            if text in body:
                return body
            time.sleep(0.5)
        raise TimeoutError(f"{text!r} not on the page after {timeout}s; it shows: {body[:500]!r}")

    def screenshot(self, path: Path, timeout: float = 15) -> Path:
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = self.call("Page.captureScreenshot", format="png")["data"]
                break
            except RuntimeError as err:
                if not _between_documents(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, 15)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, 9)
                    self.proc.wait()
            self._log.close()
