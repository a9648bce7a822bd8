"""Stock `mlflow server` on a PostgreSQL database, beside ours, for the comparisons.

One worker and no job runner (neither changes an answer; both cost CI minutes)."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlflow_gcp.server import local as local_mod

from tests.conftest import clean_env


@contextmanager
def stock_server(db_uri: str, workdir: Path):
    """Yields (URL, log path) of a stock server started now; stopped on exit. The caller may
    start other servers before entering: the wait for /health is here."""
    port = local_mod.free_port()
    env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    log_path = workdir / "stock.log"
    with open(log_path, "wb") as log:
        proc = local_mod.start_group(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db_uri,
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--artifacts-destination", str(workdir / "stock-artifacts")],
            env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield _Waiting(f"http://127.0.0.1:{port}", proc, log_path)
    finally:
        local_mod.stop_group(proc)


class _Waiting:
    def __init__(self, url: str, proc, log_path: Path):
        self.url, self.proc, self.log_path = url, proc, log_path

    def wait(self) -> str:
        """Wait for /health; the URL."""
        try:
            local_mod.wait_http(f"{self.url}/health", self.proc, local_mod.HEALTH_TIMEOUT, "stock mlflow")
        except local_mod.LocalError as err:
            pytest.fail(f"{err}\n{self.log_path.read_text(errors='replace')[-3000:]}", pytrace=False)
        return self.url
