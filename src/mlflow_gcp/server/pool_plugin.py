"""The SQLAlchemy engine plugin `mlflow_gcp_pool` (see pool.py for why it exists).

Registered under the `sqlalchemy.plugins` entry point in pyproject.toml.
"""

from __future__ import annotations

import sys

from sqlalchemy.engine import CreateEnginePlugin
from sqlalchemy.pool import NullPool

from mlflow_gcp.server.pool import OVERFLOW_PARAM, PLUGIN_NAME, SIZE_PARAM


def _serves_requests() -> bool:
    # MLflow's own test for "running as the server" (mlflow/server/__init__.py): a uvicorn worker
    # has imported uvicorn, the `mlflow server` launcher process has not.
    return "uvicorn" in sys.modules or "gunicorn" in sys.modules


class PoolPlugin(CreateEnginePlugin):
    def __init__(self, url, kwargs):
        super().__init__(url, kwargs)
        query = url.query
        try:
            size = int(query[SIZE_PARAM])
            overflow = int(query[OVERFLOW_PARAM])
        except (KeyError, ValueError) as err:
            raise ValueError(
                f"{PLUGIN_NAME} needs integer {SIZE_PARAM} and {OVERFLOW_PARAM} URL parameters"
            ) from err
        # SQLAlchemy hands us the very dict it builds the engine from (url._instantiate_plugins).
        for key in ("pool_size", "max_overflow", "poolclass"):
            kwargs.pop(key, None)
        if _serves_requests():
            kwargs["pool_size"] = size
            kwargs["max_overflow"] = overflow
        else:
            kwargs["poolclass"] = NullPool

    def update_url(self, url):
        return url.difference_update_query([SIZE_PARAM, OVERFLOW_PARAM])
