"""Small modules standing in for real ones in sys.modules, only while MLflow's app is imported.

Why: MLflow imports some modules at module level that a tracking server never uses at start (the
AI gateway's routers when it is off: gateway_off.py; alembic: deferred_alembic.py). The import
system returns a module found in sys.modules without importing it or its parent packages, so a
stand-in keeps the real one out of the worker's start.
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Callable, Mapping


@contextlib.contextmanager
def placed(modules: Mapping[str, Callable[[], dict]], doc: str):
    """Inside the block, each of `modules` not imported yet is a module documented `doc` with
    the names its factory returns. Afterwards each is removed unless something replaced it in the
    meantime (a stand-in that gave way to the real module keeps the real one), so later imports
    get the real modules."""
    placed_now = []
    for name, names in modules.items():
        if name in sys.modules:
            continue
        module = types.ModuleType(name, doc)
        module.__dict__.update(names())
        sys.modules[name] = module
        placed_now.append(module)
    try:
        yield
    finally:
        for module in placed_now:
            if sys.modules.get(module.__name__) is module:
                del sys.modules[module.__name__]
