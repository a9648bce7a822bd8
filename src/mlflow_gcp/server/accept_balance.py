"""Spread new connections evenly over the uvicorn workers, without state shared between them.

Why: the workers share one listening socket, and asyncio's selector loop accepts up to `backlog`
(uvicorn: 2048) connections each time the socket turns readable. When a client opens 8
keep-alive connections at once, whichever worker wakes first takes most of them and keeps them:
measured with 2 workers, 8 connections split mostly 6/2 or 5/3, at times 7/1 or 8/0. Every request costs
Python CPU under the GIL, so one worker is saturated while the other idles (trace ingest kept
~1.5 of 2 CPUs busy; search_runs and log_batch varied widely from run to run). Cloud Run's front
end holds keep-alive connections to the container too, so the same happens there.

How: in each worker (only with more than one), the loop's accept for the listening socket takes
ONE connection per readiness event, and a worker that already holds k connections first steps
aside for k ms (capped): the socket stays readable, so a worker holding fewer connections,
woken by the same event, takes the connection in the meantime. After its pause a worker accepts
whatever is still waiting, so a busy, stuck or restarting peer delays a new connection by at most
`MAX_DELAY` and never stalls accepts. A worker restarted by uvicorn's supervisor starts at 0 and
so takes the next connections. One worker: nothing changes. The cost: a new connection that
arrives while every worker holds some waits up to k ms (/health on a fresh connection with 4
held per worker: median 5.7 -> 8.0 ms here); a keep-alive client pays it once.

Measured (2 workers, N keep-alive connections opened at once, 12 trials each, larger share
first): before, N=8 gave 6/2 six times, 5/3 three times, 7/1, 8/0 and 4/4 once each; N=16 from
9/7 to 16/0; N=4 mostly 3/1. After, N=8 4/4 and N=16 8/8 in every trial, N=4 2/2 (4/0 once, in
the first trial, while the second worker was still loading). Accepting one connection per
event without the pause is not enough (N=8: 5/3 and 6/2 most of the time): the worker that
just accepted is back at the socket first. tests/integration/test_accept_balance.py checks the
split on a real server.

Not chosen: SO_REUSEPORT sockets per worker (the kernel hashes each connection to a socket, so 8
connections split 4/4 only 27% of the time, and uvicorn binds one socket in its supervisor); a
count per worker in shared memory (a worker restarted by uvicorn's supervisor must find and
reset its slot); answering `Connection: close` from the fuller worker (each shed connection
costs the client a reconnect and a request's latency).

The hook patches the worker's running loop from the app factory (server/app.py): uvicorn loads
the app inside `Server.serve()`, before `loop.create_server`, which registers
`loop._accept_connection` as the socket's reader. Connections are counted by our HTTP protocol
(server/uvicorn_http.py). With another loop (uvloop) the hook is skipped.
"""

from __future__ import annotations

import asyncio
import os

# Set by server/launch.py when uvicorn runs more than one worker.
ENV = "MLFLOW_GCP_ACCEPT_BALANCE"
# Pause per connection already held: long enough for a less loaded peer's loop to come round
# (an idle worker answers a readiness event within ~0.1 ms), short next to a request.
DELAY_PER_CONNECTION = 0.001
MAX_DELAY = 0.010

# Connections this worker serves (protocol connection_made .. connection_lost), plus those
# accepted whose protocol is not made yet (asyncio makes it one loop iteration later).
_held = 0
_accepting = 0


def opened() -> None:
    global _held
    _held += 1


def closed() -> None:
    global _held
    _held = max(0, _held - 1)


def held() -> int:
    return _held + _accepting


def delay(k: int) -> float:
    """How long a worker holding `k` connections waits before taking a new one."""
    return min(MAX_DELAY, k * DELAY_PER_CONNECTION)


def wanted() -> bool:
    return os.environ.get(ENV, "") == "1"


# The private asyncio methods this builds on, as Python 3.11 (the image's) defines them; another
# shape skips the hook rather than break accepting.
_SIGNATURES = {
    "_accept_connection": ("protocol_factory", "sock", "sslcontext", "server", "backlog",
                           "ssl_handshake_timeout", "ssl_shutdown_timeout"),
    "_accept_connection2": ("protocol_factory", "conn", "extra", "sslcontext", "server",
                            "ssl_handshake_timeout", "ssl_shutdown_timeout"),
}


def _fits(loop) -> bool:
    import inspect

    for name, params in _SIGNATURES.items():
        method = getattr(type(loop), name, None)
        if method is None or tuple(inspect.signature(method).parameters)[1:] != params:
            return False
    return True


def install(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Replace the loop's accept with the balanced one; False when the loop is not asyncio's
    selector loop or its private accept methods changed (nothing is changed then)."""
    from asyncio import selector_events

    loop = loop or asyncio.get_running_loop()
    if not isinstance(loop, selector_events.BaseSelectorEventLoop) or not _fits(loop):
        return False
    if getattr(loop._accept_connection, "balanced", False):
        return True
    original = loop._accept_connection  # asyncio's own: its errors and back-off are kept

    def accept_one(protocol_factory, sock, sslcontext=None, server=None, backlog=100, *rest) -> None:
        global _accepting
        try:
            conn, addr = sock.accept()
            conn.setblocking(False)
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # a peer took it
        except OSError:
            # Out of descriptors or memory: asyncio's accept meets the same error and backs off.
            original(protocol_factory, sock, sslcontext, server, 1, *rest)
            return
        _accepting += 1
        task = loop.create_task(loop._accept_connection2(
            protocol_factory, conn, {"peername": addr}, sslcontext, server, *rest))
        task.add_done_callback(_made)

    def accept(protocol_factory, sock, *args) -> None:
        k = held()
        if k == 0:
            accept_one(protocol_factory, sock, *args)
            return
        loop._remove_reader(sock.fileno())
        loop.call_later(delay(k), resume, protocol_factory, sock, *args)

    def resume(protocol_factory, sock, *args) -> None:
        if sock.fileno() < 0:
            return  # the server closed meanwhile
        loop._add_reader(sock.fileno(), accept, protocol_factory, sock, *args)
        accept_one(protocol_factory, sock, *args)

    accept.balanced = True
    loop._accept_connection = accept
    return True


def _made(_task) -> None:
    # The protocol is made (counted by opened()) or its making failed: no longer in between.
    global _accepting
    _accepting = max(0, _accepting - 1)
