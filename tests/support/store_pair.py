"""MLflow's own SqlAlchemyStore and our bulk store side by side, each on a fresh database, for
tests that write the same things through both and compare the rows."""

from __future__ import annotations

import contextlib

import pytest

from mlflow_gcp.server import store as store_mod


@contextlib.contextmanager
def mlflows_and_ours(new_database, root, name: str):
    """(MLflow's store, ours) on databases `mlflow_gcp_<name>_stock` and `..._ours`, artifact roots
    `root`/stock and `root`/ours; our store's switch (BULK_ENV) is on inside the block."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(store_mod.BULK_ENV, "1")
        stock = SqlAlchemyStore(new_database(f"mlflow_gcp_{name}_stock"), str(root / "stock"))
        ours = store_mod.build_store(new_database(f"mlflow_gcp_{name}_ours"), str(root / "ours"))
        assert type(ours).__name__ == "BulkPostgresStore"
        try:
            yield stock, ours
        finally:
            for s in (stock, ours):
                s.engine.dispose()
