"""A SQLAlchemy engine plugin that gives MLflow's engines exactly the budgeted pool.

Why a plugin: MLflow (mlflow/store/db/utils.py `create_sqlalchemy_engine`) passes
MLFLOW_SQLALCHEMYSTORE_POOL_SIZE / _MAX_OVERFLOW to SQLAlchemy only when they are truthy, so a
budgeted max_overflow of 0 silently becomes SQLAlchemy's default of 10 and a db-f1-micro runs out
of connections. SQLAlchemy loads the plugins named in the URL's `plugin` query parameter inside
every process that creates an engine (the uvicorn workers included) and lets them rewrite the
engine's arguments, whatever MLflow passed.

The entrypoint adds `plugin=mlflow_gcp_pool&mlflow_gcp_pool_size=N&mlflow_gcp_max_overflow=M` to
the backend store URI it hands to `mlflow server`; the plugin strips its parameters again, so the
driver never sees them. Processes that do not serve requests (the `mlflow server` launcher checks
the schema once and then only waits) get a NullPool, so they hold no idle connection.

The plugin itself is `pool_plugin.PoolPlugin` (kept apart: it imports SQLAlchemy, and the
supervisor that builds the URI must stay light).
"""

from __future__ import annotations

PLUGIN_NAME = "mlflow_gcp_pool"
SIZE_PARAM = "mlflow_gcp_pool_size"
OVERFLOW_PARAM = "mlflow_gcp_max_overflow"


def with_pool(uri: str, pool_size: int, max_overflow: int) -> str:
    """`uri` with the query parameters that make the plugin apply this pool."""
    sep = "&" if "?" in uri else "?"
    return (
        f"{uri}{sep}plugin={PLUGIN_NAME}&{SIZE_PARAM}={int(pool_size)}"
        f"&{OVERFLOW_PARAM}={int(max_overflow)}"
    )
