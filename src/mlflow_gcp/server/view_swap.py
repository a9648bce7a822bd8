"""Serving one of MLflow's Flask views through our own, on every endpoint MLflow routes to it."""

from __future__ import annotations

import functools
import sys


def serve_with(original, view) -> bool:
    """Every endpoint of MLflow's Flask app whose view is `original` gets `view`; False (nothing
    changed) when MLflow routes nothing to `original`."""
    from mlflow.server import app as flask_app

    endpoints = [name for name, func in flask_app.view_functions.items() if func is original]
    for name in endpoints:
        flask_app.view_functions[name] = view
    return bool(endpoints)


def plain_mode() -> bool:
    """Whether MLflow serves no workspaces and not artifacts only: the mode in which our routes
    may answer in place of its views (in the others its views do more than ours)."""
    import os

    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
    from mlflow.server import ARTIFACTS_ONLY_ENV_VAR

    return not MLFLOW_ENABLE_WORKSPACES.get() and os.environ.get(ARTIFACTS_ONLY_ENV_VAR) != "true"


def view_paths(view, method: str) -> frozenset[str]:
    """The static paths (no URL arguments) MLflow's Flask app routes to `view` for `method`; none
    for no view or outside plain_mode()."""
    from mlflow.server import app as flask_app

    if view is None or not plain_mode():
        return frozenset()
    return frozenset(rule.rule for rule in flask_app.url_map.iter_rules()
                     if flask_app.view_functions.get(rule.endpoint) is view
                     and method in (rule.methods or ()) and not rule.arguments)


def announced(on: str, off: str):
    """For an `install()` returning True once it swapped a view: one INFO line saying `on` when
    it did; an exception (an MLflow that changed shape) says `off` with the error and leaves
    MLflow's own path (False)."""

    def wrap(install):
        @functools.wraps(install)
        def run() -> bool:
            try:
                done = install()
            except Exception as err:
                print(f"INFO {off}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                return False
            if done:
                print(f"INFO {on}", file=sys.stderr, flush=True)
            return done

        return run

    return wrap
