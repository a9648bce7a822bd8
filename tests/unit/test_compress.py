"""server/compress.py's ASGI encoder on the message sequences an app can send."""

from __future__ import annotations

import asyncio
import gzip
import json

from mlflow_gcp.server.compress import CompressJson, eligible_path
from mlflow_gcp.server.uiassets import accepts_gzip, with_vary

BODY = json.dumps({"metrics": [{"key": "m", "value": i / 3, "step": i} for i in range(500)]}).encode()


def run(app, path="/api/2.0/mlflow/metrics/get-history", accept=b"gzip"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [(b"accept-encoding", accept)]}
    asyncio.run(CompressJson(app)(scope, receive, send))
    start = sent[0]
    headers = dict(start["headers"])
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert not sent[-1].get("more_body", False)  # the answer is complete, once
    assert all(m.get("more_body", False) for m in sent[1:-1])
    return start["status"], headers, body


def app_sending(chunks, content_type=b"application/json", length=True):
    async def app(scope, receive, send):
        headers = [(b"content-type", content_type), (b"vary", b"Origin")]
        if length:
            headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    return app


def test_a_whole_body_then_an_empty_last_message_is_one_gzip_member_with_its_length():
    status, headers, body = run(app_sending([BODY, b""]))
    assert headers[b"content-encoding"] == b"gzip" and headers[b"vary"] == b"Origin, Accept-Encoding"
    assert int(headers[b"content-length"]) == len(body) and gzip.decompress(body) == BODY


def test_a_stream_without_length_is_compressed_as_it_comes():
    pieces = [BODY[i:i + 700] for i in range(0, len(BODY), 700)]
    status, headers, body = run(app_sending(pieces, length=False))
    assert b"content-length" not in headers and headers[b"content-encoding"] == b"gzip"
    assert gzip.decompress(body) == BODY


def test_small_other_and_unaccepted_answers_pass_as_they_are():
    for app, kwargs in [(app_sending([b'{"a": 1}', b""]), {}),
                        (app_sending([BODY], content_type=b"text/plain"), {}),
                        (app_sending([BODY]), {"accept": b"gzip;q=0, identity"}),
                        (app_sending([BODY]), {"path": "/api/2.0/mlflow-artifacts/artifacts/x.json"}),
                        (app_sending([BODY]), {"path": "/get-artifact"})]:
        status, headers, body = run(app, **kwargs)
        assert b"content-encoding" not in headers and headers[b"vary"] == b"Origin", kwargs
        assert body in (BODY, b'{"a": 1}')


def test_accept_encoding_and_vary_rules():
    assert accepts_gzip([(b"accept-encoding", b"gzip, deflate, br, zstd")])
    assert accepts_gzip([(b"accept-encoding", b"br;q=1.0, gzip;q=0.5")])
    assert not accepts_gzip([(b"accept-encoding", b"gzip;q=0")])
    assert not accepts_gzip([(b"accept-encoding", b"identity")]) and not accepts_gzip([])
    assert with_vary([(b"vary", b"Origin")]) == [(b"vary", b"Origin, Accept-Encoding")]
    assert with_vary([(b"vary", b"accept-encoding")]) == [(b"vary", b"accept-encoding")]
    assert with_vary([]) == [(b"vary", b"Accept-Encoding")]
    assert eligible_path("/ajax-api/2.0/mlflow/runs/search")
    assert not eligible_path("/ajax-api/2.0/mlflow/get-trace-artifact") and not eligible_path("/static-files/x.js")
