"""One HTTP request through an ASGI app in process: (status, body)."""

from __future__ import annotations

import asyncio


def call(app, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()], "scheme": "http",
             "http_version": "1.1", "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 1), "root_path": ""}
    out = {"status": None, "body": b""}

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], out["body"]
