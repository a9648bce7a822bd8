"""Run the fake as its own process (`python -m tests.fakegcp`), as other clients such as gcloud
or a CLI run of `mlflow-gcp up` see it.

    with StandaloneFake() as fake:      # fake.url -> "http://127.0.0.1:PORT"
        subprocess.run([...], env={..., "MLFLOW_GCP_API_ROOT": fake.url})
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class StandaloneFake:
    def __init__(self, op_polls: int = 1, startup_timeout: float = 30, strict: bool = True):
        self.op_polls = op_polls
        self.strict = strict
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> "StandaloneFake":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakegcp", "--port", "0", "--op-polls", str(self.op_polls),
             *(() if self.strict else ("--no-timing",))],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()  # the server prints its URL once it listens
        if not line.startswith("http://"):
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"fake did not start: {line!r} {err[-2000:]}")
        self.url = line
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()
        self.proc = None

    def __enter__(self) -> "StandaloneFake":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
