"""Building the bulk store class (server/store.py) without deprecated SQLAlchemy APIs."""

from __future__ import annotations

import warnings

from mlflow_gcp.server import store


def test_the_bulk_store_uses_no_deprecated_sqlalchemy_loader(monkeypatch):
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (MLflow's own models warn on import: MLflow's matter)

    monkeypatch.setattr(store, "_CLASS", None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cls = store._bulk_class()
    assert cls.__name__ == "BulkPostgresStore"
    assert [str(w.message) for w in seen if "deprecated" in str(w.message).lower()] == []
