"""Optional packages that MLflow's import pulls in and the tracking server never uses, kept out.

Why: `import mlflow` imports pandas (`mlflow.data` registers its pandas dataset at import), and
pandas imports pyarrow when it is installed (~34 MiB: its shared libraries and modules);
`mlflow.models.utils` imports scipy.sparse (~6 MiB). MLflow and pandas treat both as optional
(mlflow-skinny runs without them): every such import sits in `try: ... except ImportError`. The
server answers tracking requests without them, so in the worker they are hidden while MLflow's app
is imported (`hidden()`), and pandas and MLflow take the path they take when the package is not
installed. Once the app is built they are importable again: code that imports one later gets the
real, whole package (pandas keeps the choice it made at import: no pyarrow-backed dtypes).

pandas and numpy (~45 MiB and ~0.3 s CPU of a worker's start) are hidden too while the AI gateway
is off (`WITHOUT_GATEWAY`): its routers import them without a fallback (server/gateway_off.py
leaves those routers out), and so does nothing else the app imports. What MLflow leaves out when
they are missing (a few names of `mlflow.models`/`mlflow.types`/`mlflow.data`, and `np`/`pd` in
evaluation modules: client-side code the server never runs) `complete()` makes available on first
use, which imports the real package then.

aiohttp cannot be kept out this way with the gateway on: MLflow's assistant subclasses its classes
at import. tests/unit/test_optional_modules.py checks that the worker's app imports none of the
hidden packages, that MLflow refused them only where `complete()` knows what was left out, and
that they import and work normally afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import sys
import types

# Top-level package names; their submodules are hidden with them.
HIDDEN = ("pyarrow", "scipy")
WITHOUT_GATEWAY = ("pandas", "numpy")

# Names a module defines only when numpy/pandas imported: where the real ones live.
LATE_NAMES = {
    "mlflow.types": {
        "mlflow.types.schema": ("ColSpec", "DataType", "ParamSchema", "ParamSpec", "Schema", "TensorSpec"),
    },
    "mlflow.models": {
        "mlflow.models.signature": ("ModelSignature", "infer_signature", "set_signature"),
        "mlflow.models.utils": ("ModelInputExample", "add_libraries_to_model",
                                "convert_input_example_to_serving_input", "validate_schema",
                                "validate_serving_input"),
    },
    "mlflow.data": {  # (its registry of dataset constructors stays without them)
        "mlflow.data.pandas_dataset": ("from_pandas",),
        "mlflow.data.numpy_dataset": ("from_numpy",),
        "mlflow.data.huggingface_dataset": ("from_huggingface",),
        "mlflow.data.tensorflow_dataset": ("from_tensorflow",),
        "mlflow.data.spark_dataset": ("from_spark", "load_delta"),
    },
}
# Modules whose `try: import numpy as np / pandas as pd` left the name undefined.
LATE_PACKAGES = {
    "mlflow.data.evaluation_dataset": {"np": "numpy", "pd": "pandas"},
    "mlflow.models.evaluation.base": {"pd": "pandas"},
    "mlflow.genai.evaluation.utils": {"pd": "pandas"},
    "mlflow.genai.scorers.validation": {"pd": "pandas"},
}
# Every module seen refusing a hidden package, reviewed: those above, the datasets that then fail to
# import whole (their constructors are LATE_NAMES of mlflow.data), and pyarrow/scipy only for what
# the server never does (HDFS artifacts, pyarrow-backed pandas dtypes, sparse model inputs).
REVIEWED = frozenset({
    *LATE_NAMES, *LATE_PACKAGES, "mlflow.models.signature", "mlflow.data.pandas_dataset",
    "mlflow.data.numpy_dataset", "mlflow.data.tensorflow_dataset", "mlflow.data.huggingface_dataset",
    "mlflow.data.spark_dataset",
    "mlflow.store.artifact.hdfs_artifact_repo", "pandas.compat.pyarrow", "mlflow.models.utils",
})


def hidden_for(gateway: bool) -> tuple[str, ...]:
    return HIDDEN if gateway else HIDDEN + WITHOUT_GATEWAY


class _Hide(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = frozenset(names)
        self.refused: set[tuple[str, str]] = set()  # (package, the module importing it)

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in self.names:
            self.refused.add((top, _importer()))
            # What the import system raises for a package that is not installed.
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def _importer() -> str:
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", __name__)):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"


@contextlib.contextmanager
def hidden(names=HIDDEN):
    """Imports of `names` (not yet imported) fail as if not installed, inside the block only.
    Yields the finder: its `refused` says which module asked for which package."""
    finder = _Hide(names)
    sys.meta_path.insert(0, finder)
    try:
        yield finder
    finally:
        sys.meta_path.remove(finder)


class _OnFirstUse(types.ModuleType):
    """Stands for a package in a module's globals; the first attribute read imports it."""

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self.__name__), attr)


def _late_getattr(module, names: dict[str, tuple[str, ...]]):
    where = {name: source for source, listed in names.items() for name in listed}
    previous = module.__dict__.get("__getattr__")

    def __getattr__(attr):  # PEP 562: only for names the module lacks
        if attr in where:
            value = getattr(importlib.import_module(where[attr]), attr)
            setattr(module, attr, value)
            return value
        if not attr.startswith("_") and importlib.util.find_spec(f"{module.__name__}.{attr}"):
            # A submodule its import would have imported (it sets the attribute itself).
            return importlib.import_module(f"{module.__name__}.{attr}")
        if previous is not None:
            return previous(attr)
        raise AttributeError(f"module {module.__name__!r} has no attribute {attr!r}")

    return __getattr__


def complete() -> None:
    """After MLflow was imported with hidden packages: what it left out resolves on first use."""
    for name, names in LATE_NAMES.items():
        module = sys.modules.get(name)
        missing = {src: tuple(n for n in listed if n not in vars(module)) for src, listed in names.items()} \
            if module is not None else {}
        if any(missing.values()):
            module.__getattr__ = _late_getattr(module, missing)
    for name, packages in LATE_PACKAGES.items():
        module = sys.modules.get(name)
        for attr, package in packages.items():
            if module is not None and attr not in vars(module):
                setattr(module, attr, sys.modules.get(package) or _OnFirstUse(package))
