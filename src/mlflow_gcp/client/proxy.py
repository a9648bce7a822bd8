"""`mlflow-gcp ui`: a local reverse proxy that lets a browser use the private MLflow server.

The browser talks to http://127.0.0.1:PORT; every request goes on to the service with a fresh
Google ID token (from `tokens`, so the same sources and cache as the plugin) and the service's own
Host. Bodies stream through in 64 KiB pieces both ways, so a multi-gigabyte artifact download
needs no memory; nothing is decompressed or rewritten except `Location` headers that point at the
service. Anything the proxy forwards acts as you, so it listens on a loopback address and
`proxy_guard` lets in only your own browser's tabs of this proxy, holding this run's secret.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mlflow_gcp.client import proxy_guard, tokens
from mlflow_gcp.errors import MlflowGcpError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
UPSTREAM_TIMEOUT = 600  # seconds per read: large artifact downloads from a cold instance
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host",
}
# Authorization (both copies, see client/auth.py) is ours to set; Expect: 100-continue was
# answered by us already; Content-Length is set again from the body we send.
SKIPPED_UPSTREAM = ({"authorization", "x-serverless-authorization", "content-length", "expect"}
                    | proxy_guard.BROWSER_ONLY_HEADERS)
INVOKER_HINT = (
    "the service refused your identity: it needs roles/run.invoker on the service "
    "(mlflow-gcp access grant user:YOU@example.com)"
)


class ProxyError(MlflowGcpError):
    pass


class Upstream:
    """Where requests go: scheme, host, port and path prefix of the service URL."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProxyError(f"not a service URL: {url!r}", hint="expected https://...run.app")
        self.url = url.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.netloc = parts.netloc
        self.prefix = parts.path.rstrip("/")
        self.origin = f"{parts.scheme}://{parts.netloc}"

    def connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=UPSTREAM_TIMEOUT)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, fmt, *args) -> None:
        # The request line of the login request holds the secret.
        log.debug("%s %s", self.address_string(), proxy_guard.redact(fmt % args))

    # One upstream connection per browser connection, reused for requests without a body (the
    # UI's many GETs), which saves a TLS handshake each; a stale one is replaced transparently.
    _idle: http.client.HTTPConnection | None = None

    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _error(self, status: int, message: str) -> None:
        self._answer(status, message.encode() + b"\n", "text/plain; charset=utf-8")

    def _answer(self, status: int, body: bytes, content_type: str,
                headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _admit(self, proxy: UiProxy) -> bool:
        """Answer here (and return False) a request that must not reach the service."""
        guard = proxy.guard
        refusal = guard.refusal(self.command, self.headers)
        if refusal is None:
            login = guard.login(self.command, self.path)
            if isinstance(login, proxy_guard.Login):
                self._answer(200, login.page(), "text/html; charset=utf-8", {
                    "Set-Cookie": login.cookie, "Referrer-Policy": "no-referrer",
                })
                return False
            refusal = login
        if refusal is None and not guard.has_session(self.headers):
            refusal = guard.session_refusal(self.headers)
        if refusal is None:
            return True
        log.info("refused %s %s: %s", self.command, proxy_guard.redact(self.path), refusal)
        self._discard_body()
        self._error(403, refusal)
        return False

    def _discard_body(self) -> None:
        """Read a refused request's body, so the connection stays in step; close if unbounded."""
        length = int(self.headers.get("Content-Length") or 0)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or length > CHUNK:
            self.close_connection = True
        elif length:
            self.rfile.read(length)

    def _proxy(self) -> None:
        proxy = self.server.proxy
        if not self._admit(proxy):
            return
        try:
            token = proxy.cache.get(proxy.audience)
        except MlflowGcpError as err:
            log.error("no ID token: %s", err)
            return self._error(502, f"mlflow-gcp ui: no ID token: {err}")
        length = self.headers.get("Content-Length")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        has_body = chunked or int(length or 0) > 0
        try:
            resp, conn = self._send(proxy, token, length, chunked)
            if resp.status == 401:
                # Rejected token (revoked, clock skew): get another and try once more. A request
                # with a body was streamed already and cannot be replayed: the browser gets the
                # 401, and its next request the new token.
                token = proxy.cache.refresh_after_rejection(proxy.audience, token)
                if not has_body:
                    resp.read()
                    conn.close()
                    resp, conn = self._send(proxy, token, length, chunked)
        except MlflowGcpError as err:
            return self._error(502, f"mlflow-gcp ui: {err}")
        except (OSError, http.client.HTTPException) as err:
            log.warning("%s %s: %s", self.command, self.path, err)
            self.close_connection = True
            return self._error(502, f"mlflow-gcp ui: cannot reach {proxy.upstream.url}: {err}")
        try:
            if resp.status in (401, 403):
                log.warning("%s %s -> %d: %s", self.command, self.path, resp.status, INVOKER_HINT)
            self._relay(proxy, resp)
        except OSError as err:  # the browser went away mid-download
            log.debug("client closed: %s", err)
            self.close_connection = True
        if resp.isclosed() and not resp.will_close and not has_body:
            self._idle = conn
        else:
            conn.close()

    def finish(self) -> None:
        super().finish()
        if self._idle is not None:
            self._idle.close()

    def _send(self, proxy: UiProxy, token: str, length: str | None, chunked: bool):
        has_body = chunked or int(length or 0) > 0
        conn, self._idle = self._idle, None
        if conn is not None and not has_body:
            try:
                return self._send_on(conn, proxy, token, length, chunked), conn
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                conn.close()  # the server closed the idle connection; a new one follows
        elif conn is not None:
            conn.close()
        conn = proxy.upstream.connect()
        return self._send_on(conn, proxy, token, length, chunked), conn

    def _send_on(self, conn, proxy: UiProxy, token: str, length: str | None, chunked: bool):
        up = proxy.upstream
        conn.putrequest(self.command, up.prefix + self.path, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP | SKIPPED_UPSTREAM:
                conn.putheader(name, value)
        # Both headers, as the plugin sends them (client/auth.py SERVERLESS_AUTHORIZATION).
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("X-Serverless-Authorization", f"Bearer {token}")
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            self._copy_chunked(conn)
        else:
            if length is not None:
                conn.putheader("Content-Length", length)
            conn.endheaders()
            remaining = int(length or 0)
            while remaining > 0:
                piece = self.rfile.read(min(CHUNK, remaining))
                if not piece:
                    raise ConnectionError("the browser closed the connection mid-upload")
                conn.send(piece)
                remaining -= len(piece)
        return conn.getresponse()

    def _copy_chunked(self, conn: http.client.HTTPConnection) -> None:
        while True:
            line = self.rfile.readline()
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                conn.send(b"0\r\n\r\n")
                return
            conn.send(b"%x\r\n%s\r\n" % (size, self.rfile.read(size)))
            self.rfile.readline()

    def _relay(self, proxy: UiProxy, resp: http.client.HTTPResponse) -> None:
        self.send_response(resp.status, resp.reason)
        length = resp.getheader("Content-Length")
        for name, value in resp.getheaders():
            lower = name.lower()
            if lower in HOP_BY_HOP:
                continue
            if lower == "location" and value.startswith(proxy.upstream.origin):
                value = proxy.url + value[len(proxy.upstream.origin):]
            self.send_header(name, value)
        no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        if length is None and not no_body:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if no_body:
            return
        if length is not None:
            while piece := resp.read(CHUNK):
                self.wfile.write(piece)
            return
        while piece := resp.read1(CHUNK):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    proxy: UiProxy


class _ProxyServer6(_ProxyServer):
    address_family = socket.AF_INET6


class UiProxy:
    """Serve `upstream` on http://127.0.0.1:`port` (0 picks a free port), adding ID tokens.

    `login_url` (the URL with `?token=`) lets a browser in; `token` defaults to a new secret."""

    def __init__(self, upstream_url: str, port: int = 5000, *,
                 cache: tokens.TokenCache | None = None, audience: str | None = None,
                 bind: str = "127.0.0.1", token: str | None = None):
        self.upstream = Upstream(upstream_url)
        self.cache = cache or tokens.default_cache()
        self.audience = audience or tokens_audience(self.upstream)
        try:
            loopback = ipaddress.ip_address(bind).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ProxyError(f"the proxy listens on a loopback address only, not {bind!r}",
                             hint="anyone who reaches it acts as you")
        server_class = _ProxyServer6 if ":" in bind else _ProxyServer
        try:
            self._httpd = server_class((bind, port), _Handler)
        except OSError as err:
            raise ProxyError(f"cannot listen on {bind}:{port}: {err.strerror}",
                             hint="pass another --port") from err
        self._httpd.proxy = self
        self.port = self._httpd.server_address[1]
        host = f"[{bind}]" if ":" in bind else bind
        self.url = f"http://{host}:{self.port}"
        self.token = token or proxy_guard.new_token()
        self.guard = proxy_guard.Guard(bind, self.port, self.token)
        self.login_url = f"{self.url}/?{proxy_guard.TOKEN_PARAM}={self.token}"
        self._thread: threading.Thread | None = None

    def check_token(self) -> None:
        """Fail now, with the reason, if no token can be had (before a browser opens)."""
        self.cache.get(self.audience)

    def serve_forever(self) -> None:
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def start(self) -> UiProxy:
        """Serve from a background thread (tests, embedding)."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                        name="ui-proxy", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve_forever loop to end
            self._httpd.shutdown()
        self._httpd.server_close()


def tokens_audience(upstream: Upstream) -> str:
    return os.environ.get(tokens.AUDIENCE_ENV) or upstream.origin
