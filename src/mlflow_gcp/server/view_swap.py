"""Serving one of MLflow's Flask views through our own, on every endpoint MLflow routes to it."""

from __future__ import annotations


def serve_with(original, view) -> bool:
    """Every endpoint of MLflow's Flask app whose view is `original` gets `view`; False (nothing
    changed) when MLflow routes nothing to `original`."""
    from mlflow.server import app as flask_app

    endpoints = [name for name, func in flask_app.view_functions.items() if func is original]
    for name in endpoints:
        flask_app.view_functions[name] = view
    return bool(endpoints)
