"""server/accept_balance.py on a real asyncio loop and real sockets, one process (the split over
two workers is tests/integration/test_accept_balance.py): a worker that holds connections, with no
peer to step aside for, still accepts every new one, and its count follows them."""

from __future__ import annotations

import asyncio

import pytest

from mlflow_gcp.server import accept_balance


@pytest.fixture(autouse=True)
def fresh_counts(monkeypatch):
    monkeypatch.setattr(accept_balance, "_held", 0)
    monkeypatch.setattr(accept_balance, "_accepting", 0)


class Counted(asyncio.Protocol):
    def connection_made(self, transport):
        accept_balance.opened()

    def connection_lost(self, exc):
        accept_balance.closed()


async def until(predicate, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_a_lone_worker_accepts_every_connection_while_it_holds_others():
    errors = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        assert accept_balance.install() and accept_balance.install()  # once, however often asked
        server = await loop.create_server(Counted, "127.0.0.1", 0, backlog=64)
        port = server.sockets[0].getsockname()[1]
        writers = []
        for _ in range(12):  # one at a time: each finds the ones before it held
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
        await until(lambda: accept_balance.held() == 12)
        more = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(8)))
        writers += [w for _, w in more]
        await until(lambda: accept_balance.held() == 20)
        for writer in writers:
            writer.close()
        await until(lambda: accept_balance.held() == 0)
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert errors == []


def test_closing_the_server_while_a_connection_waits_its_turn():
    """The paused accept finds the socket closed and stops; nothing is logged as an error."""
    errors = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        accept_balance.install()
        server = await loop.create_server(Counted, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        await until(lambda: accept_balance.held() == 10)
        late = await asyncio.open_connection("127.0.0.1", port)  # the kernel accepts; we pause 10 ms
        await asyncio.sleep(0)
        server.close()
        await asyncio.sleep(2 * accept_balance.MAX_DELAY)
        for _, writer in [*held, late]:
            writer.close()

    asyncio.run(main())
    assert errors == []


def test_the_pause_grows_with_the_connections_held_and_stays_short():
    assert accept_balance.delay(0) == 0
    assert accept_balance.delay(1) < accept_balance.delay(4) < accept_balance.delay(8)
    assert accept_balance.delay(1000) == accept_balance.MAX_DELAY


def test_a_loop_whose_accept_changed_is_left_alone():
    """A future asyncio with other private accept methods serves as it would without us."""

    class Changed(asyncio.SelectorEventLoop):
        def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100,
                               ssl_handshake_timeout=None, ssl_shutdown_timeout=None, context=None):
            return super()._accept_connection(protocol_factory, sock, sslcontext, server, backlog,
                                              ssl_handshake_timeout, ssl_shutdown_timeout)

    loop = Changed()
    try:
        assert not accept_balance.install(loop)
        assert "_accept_connection" not in vars(loop)
    finally:
        loop.close()
