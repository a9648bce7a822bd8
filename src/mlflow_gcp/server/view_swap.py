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
