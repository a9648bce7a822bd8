"""Optional packages that MLflow's import pulls in and the tracking server never uses, kept out.

Why: `import mlflow` imports pandas (`mlflow.data` registers its pandas dataset at import), and
pandas imports pyarrow when it is installed (~34 MiB: its shared libraries and modules);
`mlflow.models.utils` imports scipy.sparse (~6 MiB). MLflow and pandas treat both as optional
(mlflow-skinny runs without them): every such import sits in `try: ... except ImportError`. The
server answers tracking requests without them, so in the worker they are hidden while MLflow's app
is imported (`hidden()`), and pandas and MLflow take the path they take when the package is not
installed. Once the app is built they are importable again: code that imports one later gets the
real, whole package (pandas keeps the choice it made at import: no pyarrow-backed dtypes).

pandas, numpy and aiohttp cannot be kept out this way: MLflow uses them while it imports
(`pd.DataFrame` in type aliases, `np.dtype` in class bodies, aiohttp base classes), without a
fallback. tests/unit/test_optional_modules.py checks that the worker's app imports none of
`HIDDEN` and that they import normally afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys

# Top-level package names; their submodules are hidden with them.
HIDDEN = ("pyarrow", "scipy")


class _Hide(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            # What the import system raises for a package that is not installed.
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@contextlib.contextmanager
def hidden(names=HIDDEN):
    """Imports of `names` (not yet imported) fail as if not installed, inside the block only."""
    finder = _Hide(names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
