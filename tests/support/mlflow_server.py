"""A real `mlflow server` on SQLite and a local artifact folder, for tests.

Small on purpose (2 shared cores): one uvicorn worker and no job runner. Artifacts are proxied
through the server (`mlflow-artifacts:/`), so uploads and downloads cross any front put before it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import requests

STARTUP_TIMEOUT = 120  # seconds; a cold start with migrations takes ~10-20 s on 2 busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, workdir: Path, allowed_hosts: Iterable[str] = ()):
        self.workdir = Path(workdir)
        self.allowed_hosts = list(allowed_hosts)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "mlflow-server.log"
        self._proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        hosts = ",".join([f"127.0.0.1:{self.port}", "localhost:*", *self.allowed_hosts])
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--artifacts-destination", str(self.workdir / "artifacts"),
            "--allowed-hosts", hosts,
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_AUTH"):
            env.pop(var, None)
        self._log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                      cwd=self.workdir, start_new_session=True)
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {STARTUP_TIMEOUT}s: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            # The server runs in its own session: stop its workers with it.
            os.killpg(self._proc.pid, 15)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait()
        if hasattr(self, "_log"):
            self._log.close()
