"""The guard of every piece of MLflow's code this server copies, or replaces with code written from
it: the piece runs only while MLflow's source is, byte for byte, the one it was written from
(its sha256 recorded beside the copy). An MLflow whose source differs keeps its own code until
the copy is checked against the new source again."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable


def digest(obj) -> str | None:
    """sha256 of `obj`'s source; None when it has none (None, a builtin, no file)."""
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
    except (OSError, TypeError):
        return None


def same(pairs: Iterable[tuple[object, str]]) -> bool:
    """Whether every (object, recorded sha256) pair matches."""
    return all(recorded is not None and digest(obj) == recorded for obj, recorded in pairs)
