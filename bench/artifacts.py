"""Figures for issue 6: 1 GiB artifact upload and download throughput, proxied and direct.

    .venv/bin/python bench/artifacts.py               # 1 GiB
    .venv/bin/python bench/artifacts.py --mib 256     # a quicker look

Everything runs on 127.0.0.1: one GCS emulator (gcp-storage-emulator, in memory), PostgreSQL,
our entrypoint (`python -m mlflow_gcp.server`) once with ARTIFACT_MODE=proxied and once with
direct, each behind the Cloud Run front stand-in (ID tokens, 32 MiB request cap), and the real
MLflow client with the `gcp` plugin in its own process (plain log_artifact / download_artifacts).

Rows: proxied (parts signed by the server, written straight to the bucket, composed; download
streamed through the server), direct (the client's own bucket access), and stock MLflow's
proxied upload (one PUT per file, MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=false) through the same
front: expected to fail with 413 past 32 MiB. The emulator keeps objects in memory and copies
on compose, so absolute MB/s say more about this machine than about GCS; compare the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import servers  # noqa: E402
from mlflow_gcp.server import local  # noqa: E402
from tests.conftest import launch_server  # noqa: E402
from tests.support.clientenv import clean_env  # noqa: E402
from tests.support.cloudrun_front import CloudRunFront  # noqa: E402
from tests.support.idp import LocalIdentityProvider  # noqa: E402

MiB = 1024 * 1024
FRONT_HOST = "mlflow-bench-7x2kq9ab3c-ew.a.run.app"
INVOKER = "bench@test-project.iam.gserviceaccount.com"

CLIENT = r"""
import json, os, sys, time
import mlflow
from mlflow import MlflowClient

path, workdir = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
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
    out["same_size"] = os.path.getsize(got) == size
    os.remove(got)
print(json.dumps(out))
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_random(path: Path, size: int) -> None:
    block = os.urandom(MiB)  # rotated so no two MiB are equal (no dedupe, no compression luck)
    with open(path, "wb") as fh:
        for i in range(size // MiB):
            fh.write(block[i % MiB :] + block[: i % MiB])


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


def run_client(front, key: Path, path: Path, work: Path, **env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, str(path), str(work / "downloads")],
        env=clean_env(MLFLOW_TRACKING_URI=front.url, MLFLOW_TRACKING_AUTH="gcp",
                      MLFLOW_GCP_CREDENTIALS_FILE=str(key), MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", **env),
        capture_output=True, text=True, timeout=3600,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": out.stderr.strip().splitlines()[-1][:160]}


def rate(size: int, seconds: float | None) -> str:
    return f"{size / MiB / seconds:8.1f}" if seconds else "       -"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="artifact size in MiB (default 1024)")
    args = parser.parse_args(argv)
    size = args.mib * MiB
    work = Path(tempfile.mkdtemp(prefix="bench-artifacts-"))
    emulator, host = local.start_emulator(None, None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    local.create_bucket(host, bucket)
    idp = LocalIdentityProvider().start()
    key = idp.write_key_file(work / "invoker.json", INVOKER)
    server_key = idp.write_key_file(work / "server.json", "mlflow-server@test-project.iam.gserviceaccount.com")
    (work / "downloads").mkdir()
    db = servers.create_database("bench_artifacts")
    procs, fronts = [], []
    rows = []
    try:
        path = work / f"artifact-{args.mib}mib.bin"
        log(f"writing {args.mib} MiB of random bytes")
        write_random(path, size)
        small = work / "artifact-33mib.bin"
        write_random(small, 33 * MiB)
        for mode in ("proxied", "direct"):
            log(f"starting the {mode} server")
            proc, front = start(mode, host, bucket, db, work, idp, server_key)
            procs.append(proc)
            fronts.append(front)
            extra = {"STORAGE_EMULATOR_HOST": host} if mode == "direct" else {}
            log(f"{mode}: upload + download of {args.mib} MiB")
            rows.append((f"mlflow-gcp {mode}", size, run_client(front, key, path, work, **extra)))
            if mode == "proxied":
                for label, f in (("stock proxied 33 MiB", small), (f"stock proxied {args.mib} MiB", path)):
                    log(f"{label} (MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=false)")
                    rows.append((label, f.stat().st_size, run_client(
                        front, key, f, work, MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD="false")))
    finally:
        for front in fronts:
            front.close()
        for proc in procs:
            local.stop_group(proc)
        idp.close()
        local.stop_group(emulator)
        servers.drop_database(db)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'mode':28}  {'up MB/s':>8}  {'down MB/s':>9}  result")
    for label, n, r in rows:
        result = "ok, byte count equal" if r.get("same_size") else r.get("error", "download size differs")
        print(f"{label:28}  {rate(n, r.get('up_s'))}  {rate(n, r.get('down_s')):>9}  {result}")
    print("(MB/s = MiB per second; one GCS emulator in memory, 127.0.0.1, "
          f"{os.cpu_count()} CPUs shared; Cloud Run's 32 MiB cap enforced by the front)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
