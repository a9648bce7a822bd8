"""The server alone: requests captured from MLflow's own client, replayed by a lean load generator.

Why: several rows of bench/clients.py are bound by MLflow's client's own CPU, because its client
processes share this machine's 2 CPUs with the server and PostgreSQL (log_batch at 16 clients:
4.3-4.7 ms of client CPU per request against our server's 3.2 ms; search_runs: 32-43 ms to parse
one 100-run answer; search_traces ~240 ms per call; get_metric_history's 100,000 points 1.4-1.6 s).
On Cloud Run the clients are on the users' machines, not on the instance's CPU. These rows keep
what reaches the server exactly what MLflow's client sends, and take the client's CPU away.

Capture: `MlflowClient` (its own code, unchanged) talks to `Recorder`, a stand-in HTTP server in
front of the real one that records every request as it arrives (method, path and query, headers
in their order, body) and forwards it, recording the answer's status, length and first bytes.
Writes under measurement (log-batch) are not forwarded but answered `{}` as the server does: the
replay must be the first time the server sees those rows. Capture is per server (stock and ours
each get what the client sent to them, page tokens included) and untimed.

Replay: each captured request pre-serialized once (HTTP/1.1, Host rewritten to the server, the
rest as the client sent it), sent over keep-alive raw sockets, one thread per connection, the
connections spread over a few processes (bench/clients.py's split and process runner). A "call"
is the whole sequence one client call sent (search_traces: the search, then its batch gets;
get_metric_history: its paged GETs), replayed in order on one connection. Every answer is read
whole (Content-Length, chunked, or to the close), its status must be the one captured (200) and
its length within a factor 2 of the captured answer's with the same first bytes; anything else
counts as an error. The replayer's own CPU per call is reported beside each row.
"""

from __future__ import annotations

import functools
import http.client
import os
import select
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from bench import clients
from bench.loads import Result

LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"
PREFIX = 2  # first bytes of an answer compared with the captured one ('{"', or gzip's magic)
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass(frozen=True)
class Captured:
    """One request as MLflow's client sent it, and what the server answered during capture."""

    method: str
    target: str  # path and query, as on the request line
    headers: tuple[tuple[str, str], ...]  # in the client's order, Host included
    body: bytes
    status: int
    length: int  # answer body bytes as sent (still encoded)
    prefix: bytes

    def wire(self, host: str) -> bytes:
        """The request as bytes on a connection to `host` (host:port)."""
        lines = [f"{self.method} {self.target} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in self.headers if name.lower() != "host"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class Recorder:
    """A stand-in HTTP server in front of `base`: records every request, forwards it (or answers
    `{}` itself for the paths in `stub`) and relays the answer unchanged (encoding kept)."""

    def __init__(self, base: str, stub: tuple[str, ...] = ()):
        target = urlsplit(base)
        self.target = (target.hostname, target.port)
        self.stub = stub
        self.lock = threading.Lock()
        self.seen: list[Captured] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    raise NotImplementedError("chunked request bodies are not captured")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, answer = recorder._answer(self.command, self.path, list(self.headers.items()), body)
                with recorder.lock:
                    recorder.seen.append(Captured(self.command, self.path, tuple(self.headers.items()), body,
                                                  status, len(answer), answer[:PREFIX]))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _any  # noqa: N815 (http.server's names)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def _answer(self, method, path, headers, body) -> tuple[int, list[tuple[str, str]], bytes]:
        if urlsplit(path).path in self.stub:
            return 200, [("Content-Type", "application/json")], b"{}"
        conn = http.client.HTTPConnection(*self.target, timeout=600)
        try:
            host = f"{self.target[0]}:{self.target[1]}"
            conn.request(method, path, body, headers={**{k: v for k, v in headers if k.lower() != "host"}, "Host": host})
            resp = conn.getresponse()
            answer = resp.read()  # de-chunked, still encoded
            return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP], answer
        finally:
            conn.close()

    def take(self) -> list[Captured]:
        """The requests recorded since the last take, in the order they arrived."""
        with self.lock:
            taken, self.seen = self.seen, []
        return taken

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def capture(base: str, call, stub: tuple[str, ...] = ()) -> list[Captured]:
    """The requests `call(client)` makes with an `MlflowClient` pointed at a recorder before
    `base`; every answer must have been a 200. The process's tracking URI points at the recorder
    too: MLflow's client reaches some data through it, not through the client's own URI (stock's
    search_traces downloads the spans of a trace not in its spans table from the artifact repo)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with Recorder(base, stub) as rec, _use_tracking_uri(rec.url):
        call(client(rec.url))
        seen = rec.take()
    bad = [(c.method, c.target, c.status) for c in seen if c.status != 200]
    if bad or not seen:
        raise RuntimeError(f"capture got non-200 answers or nothing: {bad}")
    return seen


def client(url: str):
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    from mlflow import MlflowClient

    return MlflowClient(url)


class Connection:
    """One keep-alive HTTP/1.1 connection on a raw socket; reopened after a close or a failure."""

    def __init__(self, host: str, port: int):
        self.addr = (host, port)
        self.sock: socket.socket | None = None
        self.buf = bytearray()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, bytearray()

    def _more(self) -> bool:
        chunk = self.sock.recv(1 << 18)
        self.buf += chunk
        return bool(chunk)

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            if not self._more():
                raise ConnectionError("closed by the server mid-answer")

    def exchange(self, request: bytes) -> tuple[int, int, bytes]:
        """Send `request`, read its whole answer: (status, body bytes, the body's first bytes)."""
        if self.sock is not None and select.select([self.sock], [], [], 0)[0]:
            # Readable while idle: the server closed it (uvicorn drops a keep-alive connection
            # after 5 idle seconds). A new one, as urllib3 does under MLflow's client.
            self.close()
        if self.sock is None:
            self.sock = socket.create_connection(self.addr, timeout=600)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(request)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if not self._more():
                raise ConnectionError("closed by the server before an answer")
        head = bytes(buf[:end]).lower()
        del buf[:end + 4]
        status = int(head[9:12])
        if b"\r\ntransfer-encoding: chunked" in head:
            length, first = self._chunked()
        elif (at := head.find(b"\r\ncontent-length:")) >= 0:
            eol = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:eol if eol >= 0 else None])
            self._need(length)
            first = bytes(buf[:PREFIX])
            del buf[:length]
        else:  # delimited by the close
            while self._more():
                pass
            length, first = len(buf), bytes(buf[:PREFIX])
            self.close()
            return status, length, first
        if b"\r\nconnection: close" in head:
            self.close()
        return status, length, first

    def _chunked(self) -> tuple[int, bytes]:
        buf, length, first = self.buf, 0, b""
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                self._need(len(buf) + 1)
            size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
            del buf[:eol + 2]
            if size == 0:  # trailers, if any, end with an empty line
                while (end := buf.find(b"\r\n")) != 0:
                    if end < 0:
                        self._need(len(buf) + 1)
                    else:
                        del buf[:end + 2]
                del buf[:2]
                return length, first
            self._need(size + 2)
            if len(first) < PREFIX:
                first += bytes(buf[:PREFIX - len(first)])
            length += size
            del buf[:size + 2]


def _check(got: tuple[int, int, bytes], want: tuple[int, int, bytes]) -> None:
    status, length, first = got
    if status != want[0] or not want[1] / 2 <= length <= max(want[1] * 2, 64) or first != want[2]:
        raise AssertionError(f"answer {status}, {length} bytes, {first!r}; captured {want}")


def _process(host, port, connections, warm_up, per_conn, repeat, deadline_s, barrier, results):
    """One replayer process: its connections as threads (clients.run_processes' protocol)."""
    conns = [Connection(host, port) for _ in connections]

    def one(n: int, k: int) -> None:
        calls = connections[n]
        for request, want in calls[k % len(calls)]:
            try:
                _check(conns[n].exchange(request), want)
            except Exception:
                conns[n].close()  # the rest of the answer may still be on the way
                raise

    def last(n: int) -> int:
        return warm_up + per_conn if repeat else min(warm_up + per_conn, len(connections[n]))

    clients.measure([functools.partial(one, n) for n in range(len(connections))],
                    [range(warm_up)] * len(connections),
                    [range(warm_up, last(n)) for n in range(len(connections))],
                    deadline_s, barrier, results)
    for conn in conns:
        conn.close()


def replay(base: str, connections: list[list[list[Captured]]], per_conn: int, deadline_s: float,
           warm_up: int = clients.WARM_UP, repeat: bool = True, at_start=None) -> Result:
    """Each item of `connections` is one connection's captured calls: `warm_up` untimed calls,
    then up to `per_conn` timed ones (or until the deadline), call k being calls[k % len(calls)];
    with `repeat` off no call is sent twice (fewer if the calls run out). One op = one whole call."""
    host, port = urlsplit(base).hostname, urlsplit(base).port
    wired = [[[(c.wire(f"{host}:{port}"), (c.status, c.length, c.prefix)) for c in call] for call in calls]
             for calls in connections]
    args, at = [], 0
    for threads in clients.threads_per_process(len(wired)):
        args.append((host, port, wired[at:at + threads], warm_up, per_conn, repeat, deadline_s))
        at += threads
    return clients.run_processes(_process, args, deadline_s, at_start)


@dataclass
class Row:
    """A replayed row: the figure's result, and the server's CPU (its tree, PostgreSQL) per call."""

    result: Result
    server_ms: float
    database_ms: float

    def describe(self) -> str:
        r = self.result
        return (f"{r.ops} calls, {r.errors} err; CPU per call: replayer {r.client_cpu_ms:.2f} ms, "
                f"server {self.server_ms:.1f} ms, PostgreSQL {self.database_ms:.1f} ms")


def measured(server, connections, per_conn: int, deadline_s: float, **kw) -> Row:
    """`replay` against `server` (bench/servers.py's Server), with its CPU over the timed calls."""
    from bench.servers import cpu_spent

    before: dict[int, float] = {}
    r = replay(server.url, connections, per_conn, deadline_s, at_start=lambda: before.update(server.cpu_seconds()), **kw)
    spent = cpu_spent(before, server.cpu_seconds()) if before else (float("nan"),) * 2
    return Row(r, *(s / max(r.ops, 1) * 1000 for s in spent))


def failed(what: str, err: Exception) -> Row:
    """A capture that failed (the client's own call raised): one error, no figure, the bench goes on."""
    print(f"{what}: capture failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    return Row(Result(ops=0, seconds=0.0, errors=1, latencies=[]), float("nan"), float("nan"))


def log_batch(server, experiment_id: str, connections: int, per_conn: int, deadline_s: float) -> Row:
    """bench/clients.py's log_batch calls (its own Metric list, one run per connection), each
    body sent once: warm-up and timed calls all distinct, as the client's real calls are."""
    try:
        per_run = _log_batch_bodies(server.url, experiment_id, connections, per_conn)
    except Exception as err:
        return failed("log_batch", err)
    return measured(server, per_run, per_conn, deadline_s, repeat=False)


def _log_batch_bodies(base: str, experiment_id: str, connections: int, per_conn: int) -> list[list[list[Captured]]]:
    per_run = []
    with Recorder(base, stub=(LOG_BATCH,)) as rec:
        mlflow_client = client(rec.url)
        for _ in range(connections):
            call = clients.OPS["log_batch"](mlflow_client, experiment_id)  # creates the run (forwarded)
            rec.take()
            calls = []
            for i in range(-clients.WARM_UP, per_conn):  # clients.py's warm-up numbers, then 0, 1, ...
                call(i)
                calls.append(rec.take())
            per_run.append(calls)
    for calls in per_run:
        for call in calls:
            if [c.target for c in call] != [LOG_BATCH]:
                raise RuntimeError(f"log_batch sent {[c.target for c in call]}")
    return per_run


def search(server, op: str, experiment_id: str, connections: int, per_conn: int, deadline_s: float) -> Row:
    """One bench/clients.py search call (`op`: search_runs, search_runs_by_start, search_traces)
    captured, then replayed over `connections` connections."""
    try:
        call = capture(server.url, lambda c: clients.OPS[op](c, experiment_id)(0))
    except Exception as err:
        return failed(op, err)
    # One untimed call per connection: the server's workers already ran the client rows' calls.
    return measured(server, [[call]] * connections, per_conn, deadline_s, warm_up=1)


def history(server, run_id: str, key: str, tries: int) -> tuple[float, Row]:
    """MlflowClient.get_metric_history's paged GETs, captured (that call is the warm-up), then
    replayed `tries` times on one connection: median seconds per whole history."""
    try:
        call = capture(server.url, lambda c: c.get_metric_history(run_id, key))
    except Exception as err:
        return float("nan"), failed("get_metric_history", err)
    row = measured(server, [[call]], tries, 600.0, warm_up=0)
    lat = row.result.latencies
    return (statistics.median(lat) if lat else float("nan")), row
