"""python -m tests.fakegcp [--host H] [--port N] [--op-polls K] [--no-timing]: serve the fake
until interrupted.

Prints the root URL on the first line of stdout (flushed), so a parent process can read it."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .server import FakeGcp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakegcp", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--op-polls", type=int, default=1,
                        help="reads after which a long-running operation is done (0: at once)")
    parser.add_argument("--no-timing", action="store_true",
                        help="operations take no time and changes propagate at once (default: Google's "
                             "durations on the fake's clock, which clients advance by waiting)")
    args = parser.parse_args(argv)
    fake = FakeGcp(host=args.host, port=args.port, op_polls=args.op_polls, strict=not args.no_timing).start()
    print(fake.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
