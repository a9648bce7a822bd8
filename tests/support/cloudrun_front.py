"""A local stand-in for Cloud Run's front door, in front of a real local server.

What it does, as Cloud Run does for a private service:
- no `Authorization: Bearer` token at all: 403 "Your client does not have permission to get
  URL" (what a private service answers an anonymous browser or curl; `missing_token_status`
  changes it);
- a token that fails the checks: RS256 signature by a key in `certs`, `aud` equal to the service
  URL (or an extra audience), `exp` in the future by `clock`: 401;
- a valid token whose `email` is not in `allowed_invokers` (when given): 403;
- a request body over `max_body_bytes` (Cloud Run's HTTP/1 limit, 32 MiB) gets 413;
- forwards everything else to `upstream_url` with `Host` set to the run.app host and the usual
  X-Forwarded-* headers, streaming bodies both ways.

Which token, and what the container gets (Google's service-to-service page): the token may come
in `Authorization` or `X-Serverless-Authorization`; when both are present only the latter is
checked, and `Authorization` then reaches the container untouched. Cloud Run removes the checked
token's signature before passing it on, so the container cannot verify that one.

It records every request (method, path, status, caller) in `log` for assertions.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tests.support import jwt
from tests.support.httpserver import BackgroundServer, QuietHandler

CLOUD_RUN_MAX_BODY = 32 * 1024 * 1024
CHUNK = 64 * 1024
# A refused upload is read and discarded up to this size so the client sees our status code
# instead of a reset connection; past it we just close.
DRAIN_LIMIT = 256 * 1024 * 1024
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host",
}
UNAUTHORIZED_PAGE = (
    b"<html><head><title>401 Unauthorized</title></head><body><h1>Error: Unauthorized</h1>"
    b"<h2>Your client does not have permission to the requested URL <code>%s</code>.</h2>"
    b"</body></html>"
)
FORBIDDEN_PAGE = (
    b"<html><head><title>403 Forbidden</title></head><body><h1>Error: Forbidden</h1>"
    b"<h2>Your client does not have permission to get URL <code>%s</code> from this server.</h2>"
    b"</body></html>"
)
TOO_LARGE_PAGE = (
    b"<html><head><title>413 Request Entity Too Large</title></head><body>"
    b"<h1>Error: Request Entity Too Large</h1>"
    b"<h2>Your client issued a request that was too large.</h2></body></html>"
)


SERVERLESS = "X-Serverless-Authorization"


def strip_signature(authorization: str) -> str:
    """`Bearer h.p.s` -> `Bearer h.p.`: what Cloud Run leaves of the token it checked."""
    scheme, _, token = authorization.partition(" ")
    head, dot, _signature = token.rpartition(".")
    return f"{scheme} {head}{dot}" if dot else authorization


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    status: int
    caller: str | None  # the token's email, when the token was valid
    reason: str = ""  # why it was refused, for 401/403/413


class _TooLarge(Exception):
    pass


class CloudRunFront(BackgroundServer):
    def __init__(
        self,
        upstream_url: str,
        audience: str | None = None,
        *,
        certs: Mapping | Callable[[], Mapping],
        max_body_bytes: int = CLOUD_RUN_MAX_BODY,
        allowed_invokers: Iterable[str] | None = None,
        host: str | None = None,
        extra_audiences: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        missing_token_status: int = 403,
    ):
        """`audience` None means the front's own URL (known once started), like a service URL.

        `allowed_invokers`: emails or IAM members (`serviceAccount:x`, `user:x`) holding
        run.invoker; None lets any valid token through.
        """
        up = urllib.parse.urlsplit(upstream_url)
        if up.scheme != "http" or not up.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream_url!r}")
        self.upstream = (up.hostname, up.port or 80)
        self._audience = audience
        self._certs = certs
        self.max_body_bytes = max_body_bytes
        self.allowed_invokers = (
            None if allowed_invokers is None
            else {m.split(":", 1)[-1] for m in allowed_invokers}
        )
        self.host = host or f"mlflow-{uuid.uuid4().hex[:10]}-ew.a.run.app"
        self.extra_audiences = set(extra_audiences)
        self.clock = clock
        self.missing_token_status = missing_token_status
        self.log: list[Seen] = []
        self._lock = threading.Lock()

    @property
    def audience(self) -> str:
        return self._audience or self.url

    def accepted_audiences(self) -> set[str]:
        # Cloud Run takes its URL with or without the trailing slash.
        base = {self.audience.rstrip("/"), self.audience.rstrip("/") + "/"}
        return base | self.extra_audiences

    def statuses(self) -> Counter:
        with self._lock:
            return Counter(s.status for s in self.log)

    def count(self, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for s in self.log if status is None or s.status == status)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.log.append(seen)

    def check(self, authorization: str | None) -> tuple[int, str, str | None]:
        """(status, reason, caller email): 200 when the request may pass."""
        if not authorization or not authorization.startswith("Bearer "):
            return self.missing_token_status, "no bearer token", None
        certs = self._certs() if callable(self._certs) else self._certs
        try:
            claims = jwt.verify(authorization[len("Bearer "):].strip(), certs)
        except jwt.InvalidToken as err:
            return 401, str(err), None
        if claims.get("aud") not in self.accepted_audiences():
            return 401, f"audience {claims.get('aud')!r} is not this service", None
        if not float(claims.get("exp", 0)) > self.clock():
            return 401, "token expired", None
        email = claims.get("email")
        if self.allowed_invokers is not None and email not in self.allowed_invokers:
            return 403, f"{email} lacks run.invoker", email
        return 200, "", email

    class handler_class(QuietHandler):
        def do_GET(self) -> None:
            self._handle()

        do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

        def _handle(self) -> None:
            front: CloudRunFront = self.server.owner
            path = urllib.parse.urlsplit(self.path).path
            checked = SERVERLESS if self.headers.get(SERVERLESS) else "Authorization"
            status, reason, caller = front.check(self.headers.get(checked))
            length = self.headers.get("Content-Length")
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            if status == 200 and length is not None and int(length) > front.max_body_bytes:
                status, reason = 413, f"body of {length} bytes"
            if status != 200:
                front._record(Seen(self.command, path, status, caller, reason))
                return self._refuse(status, path, length, chunked)
            try:
                # Recorded before the body is relayed, so a client that has its answer also
                # finds it in the log.
                self._forward(front, length, chunked,
                              lambda status: front._record(Seen(self.command, path, status, caller)),
                              checked)
            except _TooLarge:
                front._record(Seen(self.command, path, 413, caller, "chunked body over the cap"))
                return self._refuse(413, path, None, False)

        def _refuse(self, status: int, path: str, length: str | None, chunked: bool) -> None:
            page = {401: UNAUTHORIZED_PAGE, 403: FORBIDDEN_PAGE, 413: TOO_LARGE_PAGE}[status]
            body = page % path.encode() if b"%s" in page else page
            headers = {}
            if status == 401:
                headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            if length is not None and int(length) <= DRAIN_LIMIT:
                remaining = int(length)
                while remaining > 0:
                    got = self.rfile.read(min(CHUNK, remaining))
                    if not got:
                        break
                    remaining -= len(got)
            else:
                if chunked:  # the rest of a chunked body is unread: this connection is done
                    self.close_connection = True
                if length is not None:
                    self.close_connection = True
            if self.close_connection:
                headers["Connection"] = "close"
            self.send_body(status, body, "text/html; charset=UTF-8", headers)

        def _chunks(self, front: CloudRunFront):
            """Decode a chunked request body, stopping at the size cap."""
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                total += size
                if total > front.max_body_bytes:
                    self.close_connection = True
                    raise _TooLarge()
                yield self.rfile.read(size)
                self.rfile.readline()

        def _forward(self, front: CloudRunFront, length: str | None, chunked: bool,
                     record: Callable[[int], None], checked: str) -> None:
            conn = http.client.HTTPConnection(*front.upstream, timeout=300)
            try:
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                conn.putheader("Host", front.host)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        if name.lower() == checked.lower():
                            value = strip_signature(value)
                        conn.putheader(name, value)
                conn.putheader("X-Forwarded-For", self.client_address[0])
                conn.putheader("X-Forwarded-Proto", "https")
                if chunked:
                    conn.putheader("Transfer-Encoding", "chunked")
                    conn.endheaders()
                    for piece in self._chunks(front):
                        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                    conn.send(b"0\r\n\r\n")
                else:
                    conn.putheader("Content-Length", length or "0")
                    conn.endheaders()
                    remaining = int(length or 0)
                    while remaining > 0:
                        piece = self.rfile.read(min(CHUNK, remaining))
                        if not piece:
                            raise ConnectionError("client closed mid-body")
                        conn.send(piece)
                        remaining -= len(piece)
                resp = conn.getresponse()
                record(resp.status)
                self._relay(resp)
            finally:
                conn.close()

        def _relay(self, resp: http.client.HTTPResponse) -> None:
            self.send_response(resp.status, resp.reason)
            length = resp.getheader("Content-Length")
            for name, value in resp.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            no_body = self.command == "HEAD" or resp.status in (204, 304)
            if length is None and not no_body:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if no_body:
                return
            while piece := resp.read1(CHUNK) if length is None else resp.read(CHUNK):
                if length is None:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.write(piece)
            if length is None:
                self.wfile.write(b"0\r\n\r\n")
