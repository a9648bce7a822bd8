"""A threaded HTTP/1.1 server on 127.0.0.1 and a free port, run in a background thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Our stand-ins hold a reference to their owner for the handler.
    owner: object = None


class BackgroundServer:
    """Subclasses set `handler_class` (a BaseHTTPRequestHandler reading `self.server.owner`)."""

    handler_class: type[BaseHTTPRequestHandler]

    def start(self) -> BackgroundServer:
        self._httpd = _Server(("127.0.0.1", 0), self.handler_class)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll keeps close() (which waits for the loop) from costing half a second.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start() if not hasattr(self, "_httpd") else self

    def __exit__(self, *exc) -> None:
        self.close()


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:  # keep pytest output readable
        pass

    def send_body(self, status: int, body: bytes, content_type: str = "text/plain",
                  headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
