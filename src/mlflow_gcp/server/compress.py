"""JSON answers of the REST API gzip-compressed when they are large and the client accepts it.

Why: a search page of 100 runs is ~130 KB of JSON, a metric history of 25,000 points ~1.5 MB;
across the internet that is what a user waits for, and JSON shrinks to a tenth. MLflow's client
(requests) and every browser send `Accept-Encoding: gzip` and decode such answers themselves, so
what they read is byte for byte what MLflow wrote (tests/integration/test_differential.py).

Only `application/json` answers of `/api/` and `/ajax-api/` paths of at least MIN_SIZE bytes are
compressed, at a low level (cheap on the instance's CPU; JSON compresses well even so).
Artifact routes are never touched, whatever their content type: a downloaded file must reach
MLflow's client exactly as stored, and a client that saves the raw stream would otherwise save
gzip. Answers already encoded, streamed events and small answers pass as they are.
"""

from __future__ import annotations

import gzip
import zlib

from mlflow_gcp.server.uiassets import accepts_gzip, with_vary

MIN_SIZE = 2048
LEVEL = 4
THREAD_SIZE = 256 * 1024  # larger bodies are compressed in a worker thread
_API = ("/api/", "/ajax-api/")


def eligible_path(path: str) -> bool:
    return path.startswith(_API) and "artifact" not in path


class CompressJson:
    """ASGI: large JSON answers gzip-compressed for clients that accept gzip."""

    def __init__(self, app, min_size: int = MIN_SIZE, level: int = LEVEL):
        self.app, self.min_size, self.level = app, min_size, level

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or not eligible_path(scope["path"])
                or not accepts_gzip(scope["headers"])):
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _Encoder(send, self.min_size, self.level).send)


class _Encoder:
    """Holds an answer's start until it knows whether the body is worth compressing."""

    def __init__(self, send, min_size: int, level: int):
        self.downstream, self.min_size, self.level = send, min_size, level
        self.start = None  # held http.response.start
        self.held: list[bytes] = []
        self.size = 0
        self.zip = None  # a compressobj once streaming compressed
        self.passing = False
        self.expected = None  # the Content-Length MLflow announced
        self.finished = False  # the whole answer went out; later (empty) messages are dropped

    async def send(self, message):
        if message["type"] == "http.response.start":
            if _wanted(message):
                self.start = message
                self.expected = _length(message)
            else:
                self.passing = True
                await self.downstream(message)
            return
        if message["type"] != "http.response.body" or self.passing:
            await self.downstream(message)
            return
        if self.finished:
            return
        body, more = message.get("body", b""), message.get("more_body", False)
        if self.zip is not None:
            await self._compressed(body, more)
            return
        self.held.append(body)
        self.size += len(body)
        # Starlette's WSGI bridge sends the body, then an empty last message: a body as long as
        # its Content-Length is whole already.
        if not more or (self.expected is not None and self.size >= self.expected):
            self.finished = more
            whole = b"".join(self.held)
            if self.size < self.min_size:
                await self._plain(whole)
            else:
                data = await _gzip(whole, self.level)
                await self.downstream(self._start(len(data)))
                await self.downstream({"type": "http.response.body", "body": data})
        elif self.size >= self.min_size:  # a long stream: compress as it comes
            self.zip = zlib.compressobj(self.level, zlib.DEFLATED, 31)
            await self.downstream(self._start(None))
            held, self.held = b"".join(self.held), []
            await self._compressed(held, True)

    async def _plain(self, whole: bytes) -> None:
        # As it came; the messages still to come (if any) follow as they are.
        self.passing, more, self.finished = True, self.finished, False
        await self.downstream(self.start)
        await self.downstream({"type": "http.response.body", "body": whole, "more_body": more})

    async def _compressed(self, body: bytes, more: bool) -> None:
        data = self.zip.compress(body)
        if not more:
            data += self.zip.flush()
        if data or not more:
            await self.downstream({"type": "http.response.body", "body": data, "more_body": more})

    def _start(self, length: int | None) -> dict:
        headers = [(k, v) for k, v in self.start["headers"] if k.lower() != b"content-length"]
        headers = with_vary([*headers, (b"content-encoding", b"gzip")])
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        return {**self.start, "headers": headers}


async def _gzip(data: bytes, level: int) -> bytes:
    if len(data) < THREAD_SIZE:
        return gzip.compress(data, compresslevel=level, mtime=0)
    import anyio

    # ~10 ms per MB: not on the event loop, which serves the other requests meanwhile.
    return await anyio.to_thread.run_sync(lambda: gzip.compress(data, compresslevel=level, mtime=0))


def _length(start: dict) -> int | None:
    for name, value in start["headers"]:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _wanted(start: dict) -> bool:
    if start["status"] < 200 or start["status"] in (204, 304):
        return False
    kind = b""
    for name, value in start["headers"]:
        lower = name.lower()
        if lower == b"content-encoding":
            return False
        if lower == b"content-type":
            kind = value.split(b";")[0].strip().lower()
    return kind == b"application/json"


def wrap(app):
    return CompressJson(app)
