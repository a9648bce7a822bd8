"""`mlflow-gcp local` as a user runs it: prints the URL and the client line, serves the real
MLflow client, and Ctrl-C (SIGINT) or SIGTERM stops every process it started."""

from __future__ import annotations

import os
import threading
import signal
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty, Queue

import pytest

from mlflow_gcp.server import local as local_mod
from tests.conftest import alive, clean_env, process_tree

pytestmark = pytest.mark.slow
MiB = 1024 * 1024


def start_local(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, list[str]]:
    """Run the CLI until it prints the client line; returns the process and its stdout so far."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow_gcp", "local", *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    queue: Queue = Queue()
    # A thread reads the pipe (select() on a buffered text stream misses lines already read).
    threading.Thread(target=lambda: [queue.put(line) for line in proc.stdout] + [queue.put(None)], daemon=True).start()
    deadline = time.monotonic() + local_mod.HEALTH_TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = queue.get(timeout=1)
        except Empty:
            continue
        if line is None:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("  export MLFLOW_TRACKING_URI="):
            return proc, lines
    proc.terminate()  # the CLI stops what it started
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    pytest.fail("mlflow-gcp local did not print the client line:\n" + "\n".join(lines), pytrace=False)


def stop_and_check_tree(proc: subprocess.Popen, signum: int) -> None:
    tree = process_tree(proc.pid)
    assert len(tree) >= 3, tree  # cli -> entrypoint (supervisor) -> uvicorn (+ emulator)
    proc.send_signal(signum)
    try:
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(tree), f"left behind: {alive(tree)}"


def log_one_run(url: str, tmp_path: Path) -> str:
    code = f"""
import mlflow, pathlib
mlflow.set_tracking_uri({url!r})
mlflow.set_experiment("local-smoke")
p = pathlib.Path({str(tmp_path / "notes.txt")!r}); p.write_text("hello from local mode")
with mlflow.start_run() as run:
    mlflow.log_param("alpha", 0.5)
    mlflow.log_metric("loss", 0.25, step=1)
    mlflow.log_artifact(str(p))
    print("RUN_ID=" + run.info.run_id)
"""
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return next(line[len("RUN_ID="):] for line in out.stdout.splitlines() if line.startswith("RUN_ID="))


def test_default_local_mode_uses_embedded_storage_and_stops_on_ctrl_c(tmp_path):
    port = local_mod.free_port()
    proc, lines = start_local("--port", str(port), cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    assert f"MLflow is running at {url}" in lines
    assert f"  export MLFLOW_TRACKING_URI={url}" in lines
    try:
        run_id = log_one_run(url, tmp_path)
        data = tmp_path / "mlflow-data"  # the default --data-dir, relative to where it runs
        assert (data / "mlflow.db").stat().st_size > 0
        stored = list((data / "artifacts").rglob("notes.txt"))
        assert len(stored) == 1 and run_id in str(stored[0])
    finally:
        stop_and_check_tree(proc, signal.SIGINT)


def test_gcs_emulator_mode_stores_artifacts_in_the_bucket_and_stops_on_sigterm(tmp_path):
    port = local_mod.free_port()
    data = tmp_path / "d"
    proc, lines = start_local("--port", str(port), "--data-dir", str(data), "--gcs-emulator", cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    emulator = next(line.split(": ", 1)[1] for line in lines if line.startswith("GCS emulator: "))
    try:
        run_id = log_one_run(url, tmp_path)
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        gcs = storage.Client(
            project="local", credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator}
        )
        names = [b.name for b in gcs.list_blobs(local_mod.EMULATOR_BUCKET)]
        assert any(n.endswith(f"{run_id}/artifacts/notes.txt") for n in names), names
        blob = gcs.bucket(local_mod.EMULATOR_BUCKET).blob(next(n for n in names if n.endswith("notes.txt")))
        assert blob.download_as_bytes() == b"hello from local mode"
        check_bounded_emulator(proc, data / "gcs", gcs, tmp_path)
    finally:
        stop_and_check_tree(proc, signal.SIGTERM)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def check_bounded_emulator(cli: subprocess.Popen, gcs_dir: Path, gcs, tmp_path: Path) -> None:
    """The emulator local mode started is the packaged bounded one: a 64 MiB object sent in 4 MiB
    chunks and read back (ranged and whole) raises its peak memory by far less than its size
    (the stock emulator rewrites the whole file per chunk and reads it whole per ranged GET)."""
    cmdlines = {p: Path(f"/proc/{p}/cmdline").read_bytes().decode().split("\0") for p in process_tree(cli.pid)}
    [(pid, argv)] = [(p, a) for p, a in cmdlines.items() if "mlflow_gcp.server.gcs_emulator" in a]
    assert argv[1:3] == ["-m", "mlflow_gcp.server.gcs_emulator"]
    assert argv[argv.index("--data-dir") + 1] == str(gcs_dir.resolve())

    size = 64 * MiB
    data = os.urandom(size)
    before = peak_rss_mib(pid)
    blob = gcs.bucket(local_mod.EMULATOR_BUCKET).blob("big/object.bin", chunk_size=4 * MiB)
    blob.upload_from_string(data, content_type="application/octet-stream")
    start, end = 30 * MiB + 7, 34 * MiB + 6
    assert blob.download_as_bytes(start=start, end=end) == data[start : end + 1]
    whole = tmp_path / "object.bin"
    blob.download_to_filename(whole)  # the client checks the emulator's md5/crc32c header
    assert whole.read_bytes() == data
    growth = peak_rss_mib(pid) - before
    assert growth < size / MiB / 2, f"the emulator's peak RSS grew by {growth:.0f} MiB for a 64 MiB object"


def test_production_parity_postgres_and_a_gs_bucket_via_storage_emulator_host(tmp_path, new_database, gcs_emulator):
    # gcs_emulator exported STORAGE_EMULATOR_HOST; the CLI and the server inherit it.
    url = new_database().replace("postgresql+psycopg2://", "postgresql://")
    bucket = gcs_emulator.new_bucket()
    port = local_mod.free_port()
    proc, _lines = start_local(
        "--port", str(port), "--backend-store-uri", url, "--artifacts-destination", f"gs://{bucket}/mlflow",
        cwd=tmp_path,
    )
    try:
        run_id = log_one_run(f"http://127.0.0.1:{port}", tmp_path)
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        gcs = storage.Client(
            project="local", credentials=AnonymousCredentials(),
            client_options={"api_endpoint": gcs_emulator.host},
        )
        names = [b.name for b in gcs.list_blobs(bucket, prefix="mlflow/")]
        assert any(n.endswith(f"{run_id}/artifacts/notes.txt") for n in names), names
        assert not (tmp_path / "mlflow-data" / "mlflow.db").exists()  # the database is PostgreSQL
    finally:
        stop_and_check_tree(proc, signal.SIGINT)


def test_a_killed_cli_leaves_no_server_behind(tmp_path):
    # SIGKILL cannot be caught: the children must notice their parent is gone on their own.
    port = local_mod.free_port()
    proc, _lines = start_local("--port", str(port), cwd=tmp_path)
    tree = process_tree(proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(tree), f"left behind: {alive(tree)}"


def test_busy_port_is_one_line(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "mlflow_gcp", "local", "--port", str(port)],
            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
        )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"Error: port {port} on 127.0.0.1 is in use (pass --port)"
    assert not (tmp_path / "mlflow-data").exists() or not any((tmp_path / "mlflow-data").iterdir())


def test_local_permissions_run_the_same_code_path_with_dev_identities(tmp_path):
    port = local_mod.free_port()
    proc, _ = start_local("--port", str(port), "--permissions", "--admin", "boss@example.com", cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    code = f"""
import os, mlflow, requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
os.environ["MLFLOW_TRACKING_AUTH"] = "gcp"
os.environ["MLFLOW_GCP_DEV_USER"] = "alice@example.com"
mlflow.set_tracking_uri({url!r})
exp = mlflow.set_experiment("alice-local").experiment_id
with mlflow.start_run() as run:
    mlflow.log_metric("loss", 0.5)
print("USER=" + MlflowClient().get_run(run.info.run_id).info.user_id)
os.environ["MLFLOW_GCP_DEV_USER"] = "bob@example.com"
try:
    MlflowClient().log_metric(run.info.run_id, "loss", 9.0)
except MlflowException as err:
    print("BOB=" + ("refused" if "Permission denied" in str(err) else str(err)))
# A browser names nobody: it is the first admin.
r = requests.post({url!r} + "/api/2.0/mlflow/experiments/delete", json={{"experiment_id": exp}})
print("BROWSER=%s" % r.status_code)
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.splitlines()
        assert "USER=alice@example.com" in lines and "BOB=refused" in lines, out.stdout
        assert "BROWSER=200" in lines, out.stdout
        assert (tmp_path / "mlflow-data" / "mlflow-permissions.db").stat().st_size > 0
    finally:
        stop_and_check_tree(proc, signal.SIGINT)
