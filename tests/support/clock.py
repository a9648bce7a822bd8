"""A clock tests can move forward; call it like time.time."""

from __future__ import annotations

import threading
import time


class FakeClock:
    """Starts at the real time and only moves when told to (plus the real time elapsed)."""

    def __init__(self, start: float | None = None):
        self._offset = 0.0 if start is None else start - time.time()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds
