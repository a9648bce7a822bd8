"""MLflow's own ASGI app, with the API requests a worker runs at once capped by its pool.

Why: with a budgeted pool a worker may own only 2 connections, and one MLflow request can need 2 at
the same time (SqlAlchemyStore.log_batch opens a session inside its session). Two concurrent
log_batch calls would then each hold one connection and wait 30 s for the second, and fail. So
each worker admits at most `MLFLOW_GCP_DB_CONCURRENCY` (= connections // 2) database requests at
a time; the others wait their turn in the event loop instead of failing. Health checks, the UI's
static files and artifact transfers (no database) are never held back.

Our launcher runs it as `uvicorn --factory mlflow_gcp.server.app:create_app` (server/launch.py);
it is also the `mlflow.app` entry point, so `mlflow server --app-name mlflow-gcp` runs it too.
"""

from __future__ import annotations

import os
import time

CONCURRENCY_ENV = "MLFLOW_GCP_DB_CONCURRENCY"
# A file the supervisor creates once the schema step succeeded (server/launch.py).
SCHEMA_READY_ENV = "MLFLOW_GCP_SCHEMA_READY"
# Each request may hold this many connections at once (log_batch's nested session).
CONNECTIONS_PER_REQUEST = 2
_FREE_PREFIXES = ("/api/2.0/mlflow-artifacts/", "/ajax-api/2.0/mlflow-artifacts/")


def needs_database(path: str) -> bool:
    if not path.startswith(("/api/", "/ajax-api/")):
        return False  # UI assets, /health, /version
    return not path.startswith(_FREE_PREFIXES)


class DatabaseConcurrencyLimit:
    """ASGI middleware: at most `limit` database requests inside `app` at once."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = max(1, limit)
        self._sem = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not needs_database(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if self._sem is None:  # created inside the worker's event loop
            import asyncio

            self._sem = asyncio.Semaphore(self.limit)
        async with self._sem:
            await self.app(scope, receive, send)


class HeadersWithBody:
    """ASGI middleware: an answer's headers leave only together with its first body message.

    Why: MLflow's app runs behind Starlette's WSGI bridge, which sends the headers and the body
    from different steps (a thread hop apart). An instance killed in between leaves the client
    with headers and no body ("IncompleteRead"), and MLflow's client does not retry once headers
    arrived, although the write was done (docs/reliability.md). Held back, the two are written
    back to back; an app that fails before its body sends no headers at all, so uvicorn answers
    500, which the client retries."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held = None

        async def send_joined(message):
            nonlocal held
            if message["type"] == "http.response.start":
                held = message
                return
            if held is not None:
                start, held = held, None
                await send(start)
            await send(message)

        await self.app(scope, receive, send_joined)


def compact_json() -> bool:
    """Make MLflow's REST handlers answer compact JSON (the same values, no indentation), built
    by server/jsonout.py's single walk instead of protobuf's printer plus MLflow's int64 pass.

    Why: the handlers serialise every response with `message_to_json(..., pretty=True)`, i.e.
    `json.dumps(indent=2)`, which bypasses the C encoder: for a 100-run search_runs page that is
    ~40 ms of ~75 ms and 300 KB instead of ~200 KB. MLflow's own `pretty=False` layout is used,
    so the JSON values are exactly MLflow's. Skipped (False) if MLflow changes this function."""
    import functools
    import inspect

    from mlflow.server import handlers

    from mlflow_gcp.server.jsonout import fast_message_to_json

    original = getattr(handlers, "message_to_json", None)
    if original is None or getattr(original, "func", None) is not None:
        return original is not None  # absent, or already ours
    params = inspect.signature(original).parameters
    if "pretty" not in params or "convert_int64_to_number" not in params:
        return False
    handlers.message_to_json = functools.partial(fast_message_to_json(original), pretty=False)
    return True


def wait_for_schema() -> None:
    """Serve nothing before the supervisor's schema step succeeded. Why here: uvicorn loads the
    app before it accepts connections, so /health stays unanswered until then. The step runs
    while this worker imported MLflow, so this usually returns at once; if the step fails, the
    supervisor kills the workers."""
    path = os.environ.get(SCHEMA_READY_ENV)
    while path and not os.path.exists(path):
        time.sleep(0.02)


def gateway_enabled() -> bool:
    """MLFLOW_ENABLE_AI_GATEWAY as MLflow reads it (on unless "false" or "0"), read without
    importing MLflow: the answer decides how MLflow's app is imported. server/launch.py sets it."""
    return os.environ.get("MLFLOW_ENABLE_AI_GATEWAY", "true").lower() not in ("false", "0")


def create_app():
    """The worker's app (uvicorn's factory), built with the cyclic garbage collector paused.

    Why: importing MLflow's app creates ~365,000 objects the collector tracks, and it scans them
    again and again while they pile up (~0.35 s of a worker's ~1.5 s of start CPU here), finding
    ~2,000 garbage objects in all. Afterwards they are frozen (`gc.freeze`): they live as long as
    the worker, so later collections, during requests, skip them too; the few garbage objects
    stay (a few hundred KB at most)."""
    import gc

    from mlflow_gcp.server import accept_balance

    if accept_balance.wanted():
        # uvicorn calls this factory inside the worker's running loop, before it starts serving.
        accept_balance.install()
    gc.disable()
    try:
        return _build_app()
    finally:
        gc.freeze()
        gc.enable()


def _build_app():
    import contextlib
    import importlib.util
    import sys

    # mako (alembic's templates) imports pygments for its error pages when pygments is installed
    # (a test tool here): ~0.13 s of a worker's start for pages this server never renders.
    sys.modules.setdefault("mako.ext.pygmentplugin", None)
    from mlflow_gcp.server import caller, permissions

    with_permissions = permissions.enabled()
    if not with_permissions or importlib.util.find_spec("flask_wtf") is None:
        # search_runs (among others) tries `from mlflow.server import auth` on every request:
        # without Flask-WTF that import fails after 1-2 ms of module execution each time, and
        # with it, search_runs would filter experiments through an auth app that is not running
        # (MLflow checks only that the module imports). A None entry makes the import fail at
        # once with the same ImportError, so MLflow skips its auth code.
        sys.modules.setdefault("mlflow.server.auth", None)
    from mlflow_gcp.server import deferred_alembic, gateway_off, lazy_url_builders, optional_modules

    gateway = gateway_enabled()
    # The gateway's and the assistant's routers only with the gateway on (server/gateway_off.py).
    left_out = contextlib.nullcontext() if gateway else gateway_off.stand_ins()
    # pyarrow and scipy, and without the gateway pandas and numpy: ~40-85 MiB of each worker's
    # memory for nothing (server/optional_modules.py). alembic and Flask's URL builders only on
    # first use (server/deferred_alembic.py, server/lazy_url_builders.py): start CPU.
    with left_out, optional_modules.hidden(optional_modules.hidden_for(gateway)), \
            deferred_alembic.stand_ins(), lazy_url_builders.rules():
        from mlflow.server.fastapi_app import app
    optional_modules.complete()
    mlflow_app = app

    compacted = compact_json()

    from mlflow_gcp.server import (artifacts_stream, compress, fastpath, flask_direct, guard, history, otlp_ingest,
                                   plain_middleware, search, trace_answers, uiassets)

    permit = None
    if with_permissions:
        from mlflow_gcp.server import identity

        if identity.current() is None:
            raise RuntimeError(
                f"{permissions.PERMISSIONS_ENV}=1 needs the caller's identity: set "
                f"{identity.AUDIENCES_ENV} (or, in local mode only, {identity.DEV_HEADER_ENV}=1)")
        wait_for_schema()  # the permission store is migrated by the same step (server/migrate.py)
        permissions.configure(os.environ.get("_MLFLOW_SERVER_FILE_STORE", ""))
        app = permissions.build_app()
        permit = permissions.FastPathCheck()
    # MLflow's security middleware moves out of its app to the guard around everything below.
    guard.take_from(app)
    # MLflow's two http middleware functions as plain ASGI for the usual request (server/plain_middleware.py).
    plain_middleware.install(app)
    if not with_permissions:
        # gs:// downloads streamed from the bucket, not staged on the (in-memory) disk first.
        # (Not with permissions: it answers before MLflow's permission checks.)
        app = artifacts_stream.wrap(app)
        # A metric's history in one streamed query (with permissions MLflow checks reads first).
        app = history.wrap(app)
        if compacted:
            # search_runs' answer written from the store's rows (it passes through the compact
            # message_to_json; with permissions, MLflow's auth hooks stay on MLflow's own path).
            search.install()
            # Its plain POSTs answered before the WSGI bridge and Flask (server/search.py's Front).
            app = search.wrap(app)
            # BatchGetTraces' spans written from their stored JSON (same condition, same reason).
            trace_answers.install()
    # The UI's files from gzip copies made once (inside the caller check: they need a caller too).
    app = uiassets.wrap(app)
    if not with_permissions:
        # MLflow's client's OTLP span exports past FastAPI's routing (MLflow's handler body, same
        # store call, same answer; with permissions, MLflow's checks stay on its own path).
        app = otlp_ingest.wrap(app, mlflow_app)
        # StartTraceV3 run by MLflow's Flask app without FastAPI and the WSGI bridge (same answer).
        app = flask_direct.wrap(app, mlflow_app)
    # Plain log-batch / log-metric calls straight to the store (same store call, same answer).
    app = fastpath.wrap(app, permit=permit)
    # Who is calling (verified Google identity), attribution and the audit log.
    app = caller.wrap(app)
    wait_for_schema()
    limit = int(os.environ.get(CONCURRENCY_ENV, "0") or 0)
    if limit > 0:
        app = DatabaseConcurrencyLimit(app, limit)
    # Large JSON answers gzip-compressed for clients that accept it.
    app = compress.wrap(app)
    # Host check, CORS and the gateway switch before any of it (server/guard.py).
    return HeadersWithBody(guard.wrap(app))
