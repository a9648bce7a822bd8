"""A local TCP proxy that behaves like a slow link: a bandwidth and a round-trip time.

Why: on 127.0.0.1 a browser gets 27 MB of UI files in a blink, so what compression saves a user
across the internet does not show. Through this proxy every byte waits its turn on a shared link
of `mbit` per direction (one queue per direction, for all connections together, as a home or
office line) and then half the RTT before it is delivered.

What it does not emulate: TCP's slow start and receive windows (the proxy reads as fast as the
server writes), loss and jitter. Those all cost more the more bytes and round trips a page needs,
so the figure it gives for the larger stock transfer is, if anything, flattering to stock.
"""

from __future__ import annotations

import asyncio
import threading
import time

READ = 64 * 1024


class Link:
    """One direction: bytes leave one after the other at `bits_per_s`, arrive `delay` later."""

    def __init__(self, bits_per_s: float, delay: float):
        self.bits_per_s, self.delay = bits_per_s, delay
        self.free_at = 0.0
        self.bytes = 0  # everything that crossed it: the bytes on the wire, headers included

    def arrival(self, nbytes: int, now: float) -> float:
        self.bytes += nbytes
        if self.bits_per_s == float("inf"):
            return now + self.delay
        start = max(now, self.free_at)
        self.free_at = start + nbytes * 8 / self.bits_per_s
        return self.free_at + self.delay


class Shaper:
    """`Shaper(target_port, mbit=20, rtt_ms=40).start()` listens on 127.0.0.1:`port` and relays
    every connection to 127.0.0.1:`target_port` through the two links. With `mbit=inf` and
    `rtt_ms=0` it only counts the bytes."""

    def __init__(self, target_port: int, mbit: float = 20.0, rtt_ms: float = 40.0):
        self.target_port = target_port
        self.up = Link(mbit * 1e6, rtt_ms / 2000)
        self.down = Link(mbit * 1e6, rtt_ms / 2000)
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._server = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="shaper", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Shaper:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self.loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close():
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _connection(self, reader, writer) -> None:
        # The connection itself costs a round trip (SYN, SYN-ACK) before the first byte.
        if self.up.delay + self.down.delay:
            await asyncio.sleep(self.up.delay + self.down.delay)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer, self.up), self._pipe(up_reader, writer, self.down),
                             return_exceptions=True)

    async def _pipe(self, reader, writer, link: Link) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while (item := await queue.get()) is not None:
                data, at = item
                if (wait := at - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            await asyncio.sleep(max(0.0, link.free_at + link.delay - time.monotonic()))
            writer.close()

        sender = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(READ):
                queue.put_nowait((data, link.arrival(len(data), time.monotonic())))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
        try:
            await sender
        except (ConnectionError, OSError):
            pass
