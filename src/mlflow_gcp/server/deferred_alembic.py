"""alembic left out of the worker's start: MLflow imports it at module level, a running tracking
server on a current schema never calls it.

Why: `mlflow.store.db.utils` does `from alembic.migration import MigrationContext` and `from
alembic.script import ScriptDirectory` at import, which loads alembic and mako: ~70 modules the
worker needs for nothing else, ~4 MiB of each worker (with lazy_url_builders.py, a worker's start
CPU 1.60 -> 1.47 s). The worker uses those two names only to create or upgrade the schema, which
our supervisor's schema step does before any worker serves (server/migrate.py), or when MLflow's
store finds its tables missing (`_initialize_tables`).

`stand_ins()` puts small modules holding a `Deferred` for each such name into sys.modules while
MLflow's app is imported; the first use of a `Deferred` (an attribute read or a call) imports the
real alembic and goes on with the real object, so a worker that does need alembic gets it whole,
only later. Afterwards the stand-ins are removed, so code that imports alembic then gets the real
package. tests/unit/test_deferred_alembic.py checks that every name the worker's modules import
from alembic is covered and that MLflow's schema functions work through the stand-ins.
"""

from __future__ import annotations

import importlib
import sys
import types

from mlflow_gcp.server import stand_in_modules

# module -> the names MLflow's modules imported by the worker take from it.
STAND_INS = {
    "alembic.migration": ("MigrationContext",),
    "alembic.script": ("ScriptDirectory",),
}
_DOC = "mlflow-gcp stand-in: alembic is imported on first use"


def _real_module(name: str) -> types.ModuleType:
    module = sys.modules.get(name)
    if module is not None and module.__doc__ == _DOC:
        # Used while the stand-ins are still in place: the real module from now on.
        del sys.modules[name]
    return importlib.import_module(name)


class Deferred:
    """Stands for `module.name`; every use goes to the real object, imported the first time."""

    __slots__ = ("_module", "_name")

    def __init__(self, module: str, name: str):
        self._module = module
        self._name = name

    def _real(self):
        return getattr(_real_module(self._module), self._name)

    def __getattr__(self, attr):
        return getattr(self._real(), attr)

    def __call__(self, *args, **kwargs):
        return self._real()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<deferred {self._module}.{self._name}>"


def stand_ins(modules=STAND_INS):
    """Inside the block, `modules` not imported yet are stand-ins holding a `Deferred` for each
    of their names (stand_in_modules.placed)."""
    return stand_in_modules.placed(
        {name: (lambda name=name, names=names: {attr: Deferred(name, attr) for attr in names})
         for name, names in modules.items()}, _DOC)
