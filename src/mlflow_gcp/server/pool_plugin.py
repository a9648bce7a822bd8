"""The SQLAlchemy engine plugin `mlflow_gcp_pool` (see pool.py for why it exists).

Registered under the `sqlalchemy.plugins` entry point in pyproject.toml.
"""

from __future__ import annotations

import sys
import threading

from sqlalchemy.engine import CreateEnginePlugin
from sqlalchemy.pool import NullPool

from mlflow_gcp.server.pool import OVERFLOW_PARAM, PLUGIN_NAME, SIZE_PARAM


# One pool per database per process: MLflow opens an engine per store (tracking, model registry,
# and jobs as soon as a /jobs endpoint is hit: 3 measured per uvicorn worker), each with its own
# pool. Sharing one pool makes a worker's connections pool_size + max_overflow whatever the
# number of stores, so the budget does not depend on MLflow's internals.
_FIRST_ENGINE: dict[str, object] = {}
_LOCK = threading.Lock()


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
        self.shared = _serves_requests()
        if self.shared:
            kwargs["pool_size"] = size
            kwargs["max_overflow"] = overflow
        else:
            kwargs["poolclass"] = NullPool

    def update_url(self, url):
        return url.difference_update_query([SIZE_PARAM, OVERFLOW_PARAM])

    def engine_created(self, engine):
        if not self.shared:
            return
        quiet_ping(engine.dialect)
        key = engine.url.render_as_string(hide_password=False)
        with _LOCK:
            first = _FIRST_ENGINE.setdefault(key, engine)
        if first is not engine:
            # The new engine's own pool never connected; the dialect goes with the pool because
            # SQLAlchemy initialises a dialect on its pool's first connection only.
            unused = engine.pool
            engine.pool = first.pool
            engine.dialect = first.dialect
            unused.dispose()


def quiet_ping(dialect) -> None:
    """The pool's pre-ping (MLflow creates its engines with pool_pre_ping=True) without its round
    trip when the connection plainly is alive: idle, open, and nothing waiting on its socket.

    Why: the ping is a `SELECT 1` round trip on every checkout, a fifth of a 100-metric
    log_batch's round trips. What it guards against, a connection the server closed while it sat
    in the pool (a terminated backend, a restart, a proxy's idle timeout), leaves something on the
    socket: the server's FATAL message, or the end of the stream. Then, and whenever the check
    cannot tell (another driver, an error), the real ping runs, as before. A link that died
    without a word stays unseen either way (the real ping would hang on it as the query does)."""
    if getattr(dialect, "_mlflow_gcp_quiet_ping", False) or dialect.driver != "psycopg2":
        return
    import select

    from psycopg2.extensions import TRANSACTION_STATUS_IDLE

    real_ping = dialect.do_ping

    def _readable(fd: int) -> bool:
        poller = select.poll()  # not select.select: it refuses descriptors above 1023
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))

    def do_ping(dbapi_connection):
        try:
            quiet = (not dbapi_connection.closed
                     and dbapi_connection.info.transaction_status == TRANSACTION_STATUS_IDLE
                     and not _readable(dbapi_connection.fileno()))
        except Exception:
            quiet = False
        return True if quiet else real_ping(dbapi_connection)

    dialect.do_ping = do_ping
    dialect._mlflow_gcp_quiet_ping = True
