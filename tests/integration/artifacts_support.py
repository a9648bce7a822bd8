"""Helpers for the large-artifact tests: a client script, memory sampling, a faulty GCS hop."""

from __future__ import annotations

import http.client
import os
import threading
import urllib.parse

from tests.conftest import process_tree, tree_rss_mb
from tests.support.httpserver import BackgroundServer, QuietHandler

MiB = 1024 * 1024

# Run by the real MLflow client in its own process: for each (name, size) it writes a random file,
# logs it with plain mlflow.log_artifact, downloads it back and compares digests; it samples its
# own RSS around each step. Prints one JSON line per file. "expect_fail" files must fail to log.
CLIENT_SCRIPT = r"""
import hashlib, json, os, sys, threading, time
import mlflow
from mlflow import MlflowClient

experiment, workdir, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

class Peak:
    def __enter__(self):
        self.base = self.peak = rss_mb(); self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True); self.t.start(); return self
    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_mb()); time.sleep(0.02)
    def __exit__(self, *exc):
        self.stop = True; self.t.join(); self.extra = self.peak - self.base

def write_random(path, size):
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20)); fh.write(block); digest.update(block); left -= len(block)
    return digest.hexdigest()

def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()

mlflow.set_experiment(experiment)
client = MlflowClient()
with mlflow.start_run() as run:
    for item in spec:
        name, size = item["name"], item["size"]
        src = os.path.join(workdir, name)
        digest = write_random(src, size)
        out = {"name": name, "size": size, "run_id": run.info.run_id, "sha256": digest,
               "artifact_uri": run.info.artifact_uri}
        with Peak() as up:
            try:
                mlflow.log_artifact(src, artifact_path="data")
                out["logged"] = True
            except Exception as err:
                out["logged"] = False
                out["error"] = str(err)[:1000]  # room for the server's message after the URL
        out["up_extra_mb"] = round(up.extra, 1)
        os.remove(src)
        if out["logged"]:
            dst = os.path.join(workdir, "down-" + name)
            os.mkdir(dst)
            with Peak() as down:
                got = client.download_artifacts(run.info.run_id, "data/" + name, dst)
            out["equal"] = sha256(got) == digest
            out["down_extra_mb"] = round(down.extra, 1)
            os.remove(got); os.rmdir(dst)
        print(json.dumps(out), flush=True)
print("artifact_uri", run.info.artifact_uri, flush=True)
"""


def dir_bytes(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass  # removed while we looked
    return total


class TreePeak:
    """Peak RSS of a process tree (the server: supervisor, mlflow launcher, uvicorn workers), and
    the peak bytes in `watch_dir` (the server's TMPDIR: on Cloud Run the disk is memory too)."""

    def __init__(self, pid: int, interval: float = 0.05, watch_dir=None):
        self.pid, self.interval, self.watch_dir = pid, interval, watch_dir
        self.peak_dir_bytes = 0

    def __enter__(self):
        self.base = self.peak = tree_rss_mb(process_tree(self.pid))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_rss_mb(process_tree(self.pid)))
            if self.watch_dir is not None:
                self.peak_dir_bytes = max(self.peak_dir_bytes, dir_bytes(self.watch_dir))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.extra = self.peak - self.base


class FaultyHop(BackgroundServer):
    """A pass-through proxy in front of the GCS emulator that can fail chosen requests.

    The server's STORAGE_EMULATOR_HOST is this hop, so the part URLs it signs point here too and
    the MLflow client's part PUTs cross it: `fail_put_containing = "part-00002"` makes that part's
    upload get a 503, as a dropped connection to GCS would.
    """

    fail_put_containing: str | None = None

    def __init__(self, upstream: str):
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.failed: list[str] = []

    class handler_class(QuietHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self):
            hop: FaultyHop = self.server.owner
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            marker = hop.fail_put_containing
            if self.command == "PUT" and marker and marker in self.path:
                hop.failed.append(self.path)
                return self.send_body(503, b"injected failure")
            conn = http.client.HTTPConnection(*hop.upstream, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status)
            chunked = resp.getheader("Content-Length") is None
            for key, value in resp.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                    self.send_header(key, value)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while block := resp.read(1 << 20):
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                else:
                    self.wfile.write(block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _forward
