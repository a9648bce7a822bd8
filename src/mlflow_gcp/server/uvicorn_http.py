"""uvicorn's HTTP protocol with TCP_NODELAY set on every accepted connection.

Why: asyncio sets TCP_NODELAY only on sockets whose `proto` is IPPROTO_TCP. With more than one
worker uvicorn binds the listening socket itself as `socket.socket(family)` (proto 0), so the
accepted connections inherit proto 0 and keep Nagle's algorithm on. A response then goes out as
two writes (headers, body); the body waits for the client's delayed ACK, ~40 ms on Linux, on
every keep-alive request. Setting the option ourselves makes the worker count irrelevant.

Selected with `uvicorn --http mlflow_gcp.server.uvicorn_http:NoDelayHTTPProtocol`; it subclasses
whatever uvicorn picks for `--http auto`: httptools (a dependency of ours), else h11. httptools
parses in C: for a 100-metric log-batch request ~0.19 ms (15%) less of the server's CPU than h11
(issue 17, docs/benchmarks.md). One difference: uvicorn's h11 protocol refuses a request whose
headers exceed 16 KiB (h11's default), its httptools protocol sets no such limit.
"""

from __future__ import annotations

import socket

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from mlflow_gcp.server import accept_balance


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    def connection_made(self, transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # the peer is already gone; uvicorn handles that next
        accept_balance.opened()  # the worker's share of connections (server/accept_balance.py)
        super().connection_made(transport)

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        accept_balance.closed()
        super().connection_lost(exc)
