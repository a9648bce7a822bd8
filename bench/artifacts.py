"""Figures for issue 6: artifact upload and download throughput and memory, proxied and direct.

    .venv/bin/python bench/artifacts.py                          # 1 GiB, both modes, stock rows
    .venv/bin/python bench/artifacts.py --mib 256                 # a quicker look
    .venv/bin/python bench/artifacts.py --mib 1024,5200 --modes proxied,direct --no-stock

Everything runs on 127.0.0.1: one GCS emulator (local mode's: gcp-storage-emulator on disk, with
the bounded-memory download/compose/resumable paths of mlflow_gcp/server/gcs_emulator.py), PostgreSQL,
our entrypoint (`python -m mlflow_gcp.server`) once with ARTIFACT_MODE=proxied and once with
direct, each behind the Cloud Run front stand-in (ID tokens, 32 MiB request cap), and the real
MLflow client with the `gcp` plugin in its own process (plain log_artifact / download_artifacts).

Rows: proxied (parts signed by the server, written straight to the bucket, composed; download
streamed through the server), direct (the client's own bucket access), and stock MLflow's
proxied upload (one PUT per file, MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=false) through the same
front: expected to fail with 413 past 32 MiB (`--no-stock` skips these). Each row is printed as
soon as it is done, with the peak RSS of the server's process tree and of the client process
(sampled from /proc every 0.2 s) and whether the downloaded file's sha256 equals the upload's.
The emulator is one single-threaded Python process writing to this machine's disk, so absolute
MB/s say more about this machine than about GCS; compare the rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import servers  # noqa: E402
from mlflow_gcp.server import local  # noqa: E402
from tests.conftest import launch_server, process_tree, tree_rss_mb  # noqa: E402
from tests.support.clientenv import clean_env  # noqa: E402
from tests.support.cloudrun_front import CloudRunFront  # noqa: E402
from tests.support.idp import LocalIdentityProvider  # noqa: E402

MiB = 1024 * 1024
FRONT_HOST = "mlflow-bench-7x2kq9ab3c-ew.a.run.app"
INVOKER = "bench@test-project.iam.gserviceaccount.com"
MODES = ("proxied", "direct")
SAMPLE_EVERY = 0.2  # seconds between /proc reads: a 5 GiB row takes minutes
# What one row can leave on disk, in artifact sizes: the download, the parts and intermediate
# composes (kept by the bucket's soft delete), the artifact; plus the source file and a margin.
DISK_PER_ROW = 4

CLIENT = r"""
import hashlib, json, os, sys, time
import mlflow
from mlflow import MlflowClient

path, workdir = sys.argv[1], sys.argv[2]
mlflow.set_experiment("bench-" + os.urandom(4).hex())
out = {}
with mlflow.start_run() as run:
    t = time.perf_counter()
    try:
        mlflow.log_artifact(path)
        out["up_s"] = time.perf_counter() - t
    except Exception as err:
        out["error"] = " ".join(str(err).split()).split(" for url")[0][:120]
if "up_s" in out:
    t = time.perf_counter()
    got = MlflowClient().download_artifacts(run.info.run_id, os.path.basename(path), workdir)
    out["down_s"] = time.perf_counter() - t
    out["size"] = os.path.getsize(got)
    digest = hashlib.sha256()  # after the clock stopped: hashing 5 GiB is not download time
    with open(got, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    out["sha256"] = digest.hexdigest()
    os.remove(got)
print(json.dumps(out))
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_random(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; their sha256."""
    block = os.urandom(MiB)  # rotated so no two MiB are equal (no dedupe, no compression luck)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for i in range(size // MiB):
            piece = block[i % MiB :] + block[: i % MiB]
            digest.update(piece)
            fh.write(piece)
    return digest.hexdigest()


class PeakRss:
    """Peak summed VmRSS of each watched process tree while the `with` block runs."""

    def __init__(self, **pids: int):
        self.pids = pids
        self.peak = {name: 0.0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            for name, pid in list(self.pids.items()):
                self.peak[name] = max(self.peak[name], tree_rss_mb(process_tree(pid)))
            if self._stop.wait(SAMPLE_EVERY):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def start(mode: str, emulator_host: str, bucket: str, db: str, work: Path, idp, server_key: Path):
    env = {
        "DB_URI": servers.db_uri(db),
        "ARTIFACT_ROOT": f"gs://{bucket}/{mode}",
        "ARTIFACT_MODE": mode,
        "STORAGE_EMULATOR_HOST": emulator_host,
        "GOOGLE_APPLICATION_CREDENTIALS": str(server_key),
        "ALLOWED_HOSTS": FRONT_HOST,
        "WORKERS": "1",
        "DB_CONNECTIONS": "4",
    }
    proc, port = launch_server(env, work / f"{mode}.log")
    local.wait_http(f"http://127.0.0.1:{port}/health", proc, local.HEALTH_TIMEOUT, f"the {mode} server")
    front = CloudRunFront(f"http://127.0.0.1:{port}", certs=idp.certs, host=FRONT_HOST).start()
    return proc, front


def run_client(front, key: Path, path: Path, work: Path, pids: dict[str, int], **env) -> dict:
    """One client process: upload then download `path`; its JSON answer plus peak RSS (MB)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(path), str(work / "downloads")],
        env=clean_env(MLFLOW_TRACKING_URI=front.url, MLFLOW_TRACKING_AUTH="gcp",
                      MLFLOW_GCP_CREDENTIALS_FILE=str(key), MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    with PeakRss(**pids, client=proc.pid) as rss:
        try:
            stdout, stderr = proc.communicate(timeout=3 * 3600)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    out = json.loads(lines[-1]) if lines else {"error": (stderr.strip().splitlines() or ["no output"])[-1][:160]}
    out["rss"] = rss.peak
    return out


def rate(size: int, seconds: float | None) -> str:
    return f"{size / MiB / seconds:8.1f}" if seconds else "       -"


HEADER = f"{'mode':28}  {'MiB':>5}  {'up MB/s':>8}  {'down MB/s':>9}  {'server MB':>9}  {'client MB':>9}  result"


def row(label: str, size: int, r: dict, sha256: str) -> str:
    if "sha256" in r:
        result = "ok, byte-equal (sha256)" if r["sha256"] == sha256 else f"DIFFERS: {r['size']} bytes back"
    else:
        result = r.get("error", "no answer")
    rss = r["rss"]
    return (f"{label:28}  {size // MiB:5d}  {rate(size, r.get('up_s'))}  {rate(size, r.get('down_s')):>9}  "
            f"{rss['server']:9.0f}  {rss['client']:9.0f}  {result}")


def check_disk(where: Path, sizes: list[int], rows: int) -> None:
    need = sum(sizes) * (1 + DISK_PER_ROW * rows) + 2 * 1024 * MiB
    free = shutil.disk_usage(where).free
    if free < need:
        raise SystemExit(f"{where}: {free / 1e9:.0f} GB free, this run may need {need / 1e9:.0f} GB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", default="1024", help="artifact sizes in MiB, comma-separated (default 1024)")
    parser.add_argument("--modes", default=",".join(MODES), help="proxied,direct (default both)")
    parser.add_argument("--no-stock", action="store_true", help="skip stock MLflow's single-PUT rows")
    args = parser.parse_args(argv)
    sizes = [int(m) * MiB for m in args.mib.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}")
    work = Path(tempfile.mkdtemp(prefix="bench-artifacts-"))
    procs, fronts, emulator, idp, db = [], [], None, None, None
    try:
        check_disk(work, sizes, len(modes))
        emulator, host = local.start_emulator(work / "gcs", None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        local.create_bucket(host, bucket)
        idp = LocalIdentityProvider().start()
        key = idp.write_key_file(work / "invoker.json", INVOKER)
        server_key = idp.write_key_file(work / "server.json", "mlflow-server@test-project.iam.gserviceaccount.com")
        (work / "downloads").mkdir()
        db = servers.create_database("bench_artifacts")
        files = {}
        for size in sizes + ([] if args.no_stock else [33 * MiB]):
            path = work / f"artifact-{size // MiB}mib.bin"
            log(f"writing {size // MiB} MiB of random bytes")
            files[size] = (path, write_random(path, size))
        print(HEADER, flush=True)
        for mode in modes:
            log(f"starting the {mode} server")
            proc, front = start(mode, host, bucket, db, work, idp, server_key)
            procs.append(proc)
            fronts.append(front)
            extra = {"STORAGE_EMULATOR_HOST": host} if mode == "direct" else {}
            log(f"{mode} server idle: {tree_rss_mb(process_tree(proc.pid)):.0f} MB RSS")
            for size in sizes:
                path, sha256 = files[size]
                log(f"{mode}: upload + download of {size // MiB} MiB")
                r = run_client(front, key, path, work, {"server": proc.pid, "emulator": emulator.pid}, **extra)
                print(row(f"mlflow-gcp {mode}", size, r, sha256), flush=True)
                log(f"peak RSS of the emulator: {r['rss']['emulator']:.0f} MB")
            if mode == "proxied" and not args.no_stock:
                for size in (33 * MiB, sizes[0]):
                    path, sha256 = files[size]
                    log(f"stock proxied {size // MiB} MiB (MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=false)")
                    r = run_client(front, key, path, work, {"server": proc.pid},
                                   MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD="false")
                    print(row("stock proxied", size, r, sha256), flush=True)
    finally:
        for front in fronts:
            front.close()
        for proc in procs:
            local.stop_group(proc)
        if idp is not None:
            idp.close()
        if emulator is not None:
            local.stop_group(emulator)
        if db is not None:
            servers.drop_database(db)
        shutil.rmtree(work, ignore_errors=True)
    print("(MB/s = MiB per second; server MB = peak RSS of the server's process tree, client MB = peak "
          "RSS of the client process, sampled every 0.2 s; one GCS emulator on disk, 127.0.0.1, "
          f"{os.cpu_count()} CPUs shared; Cloud Run's 32 MiB cap enforced by the front)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
