"""Artifacts of any size through a front that caps requests at 32 MiB, like Cloud Run.

Real pieces: our server entrypoint (PostgreSQL, gs:// artifacts on the GCS emulator), the Cloud
Run front stand-in with ID-token checks, and the stock MLflow client with our auth plugin in its
own process. Proxied mode: files from MLflow's multipart threshold up go as signed part uploads
straight to the bucket, composed by the server. Direct mode: the client writes the bucket itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid

import pytest
import requests
from google.cloud import storage

from mlflow_gcp.server.artifacts_gcs import UPLOADS_PREFIX
from tests.integration.artifacts_support import CLIENT_SCRIPT, FaultyHop, MiB, TreePeak
from tests.support.clientenv import clean_env
from tests.support.cloudrun_front import CloudRunFront
from tests.support.idp import LocalIdentityProvider

pytestmark = pytest.mark.slow

FRONT_HOST = "mlflow-artifacts-7x2kq9ab3c-ew.a.run.app"
INVOKER = "trainer@test-project.iam.gserviceaccount.com"
SERVER_ACCOUNT = "mlflow-server@test-project.iam.gserviceaccount.com"
SIZES = {"tiny.txt": 1024, "odd name é.txt": 1024, "under-cap.bin": 31 * MiB, "over-cap.bin": 33 * MiB,
         "large.bin": 200 * MiB}
# Memory bound for the 200 MiB file: well under half its size, on top of the idle footprint.
MAX_EXTRA_MB = 100


class Deployment:
    def __init__(self, *, server, front, idp, bucket, hop, key_file, server_tmp):
        self.server, self.front, self.idp = server, front, idp
        self.bucket, self.hop, self.key_file, self.server_tmp = bucket, hop, key_file, server_tmp

    def objects(self) -> list[str]:
        return sorted(b.name for b in storage.Client().bucket(self.bucket).list_blobs())

    def run_client(self, tmp_path, spec: dict[str, int], **env) -> tuple[list[dict], str]:
        workdir = tmp_path / f"client-{uuid.uuid4().hex[:6]}"
        workdir.mkdir()
        proc = subprocess.run(
            [sys.executable, "-c", CLIENT_SCRIPT, f"big-{uuid.uuid4().hex[:8]}", str(workdir),
             json.dumps([{"name": n, "size": s} for n, s in spec.items()])],
            env=clean_env(MLFLOW_TRACKING_URI=self.front.url, MLFLOW_TRACKING_AUTH="gcp",
                          MLFLOW_GCP_CREDENTIALS_FILE=str(self.key_file),
                          MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", TMPDIR=str(workdir), **env),
            capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        # The client leaves nothing behind in its working (and temporary) directory.
        assert sorted(os.listdir(workdir)) == [], os.listdir(workdir)
        return results, proc.stderr


def _deploy(start_server, new_database, gcs_emulator, tmp_path_factory, mode: str) -> Deployment:
    base = tmp_path_factory.mktemp(f"artifacts-{mode}")
    idp = LocalIdentityProvider().start()
    hop = FaultyHop(gcs_emulator.host).start()
    bucket = gcs_emulator.new_bucket("big")
    server_tmp = base / "server-tmp"
    server_tmp.mkdir()
    # The server signs with a key here; on Cloud Run it signs with IAM signBlob (test_artifacts_signing.py).
    server_key = idp.write_key_file(base / "server-key.json", SERVER_ACCOUNT)
    server = start_server({
        "DB_URI": new_database("mlflow_gcp_art"),
        "ARTIFACT_ROOT": f"gs://{bucket}/mlflow",
        "ARTIFACT_MODE": mode,
        "STORAGE_EMULATOR_HOST": hop.url,
        "GOOGLE_APPLICATION_CREDENTIALS": str(server_key),
        "ALLOWED_HOSTS": FRONT_HOST,
        "WORKERS": "1",
        "DB_CONNECTIONS": "4",
        "TMPDIR": str(server_tmp),
    })
    front = CloudRunFront(server.url, certs=idp.certs, host=FRONT_HOST,
                          allowed_invokers=[f"serviceAccount:{INVOKER}"]).start()
    key_file = idp.write_key_file(base / "invoker-key.json", INVOKER)
    return Deployment(server=server, front=front, idp=idp, bucket=bucket, hop=hop,
                      key_file=key_file, server_tmp=server_tmp)


@pytest.fixture(scope="module")
def proxied(start_server, new_database, gcs_emulator, tmp_path_factory):
    d = _deploy(start_server, new_database, gcs_emulator, tmp_path_factory, "proxied")
    yield d
    d.server.stop()
    d.front.close()
    d.hop.close()
    d.idp.close()


@pytest.fixture(scope="module")
def proxied_upload(proxied, tmp_path_factory):
    """Every size logged and read back once by the plain MLflow client, memory sampled."""
    watch = TreePeak(proxied.server.proc.pid, watch_dir=proxied.server_tmp)
    with watch:
        results, stderr = proxied.run_client(tmp_path_factory.mktemp("client"), SIZES)
    return {r["name"]: r for r in results}, stderr, watch


def test_proxied_every_size_crosses_the_32_mib_front_byte_equal_in_bounded_memory(proxied, proxied_upload):
    by_name, stderr, server_mem = proxied_upload
    assert set(by_name) == set(SIZES), stderr[-2000:]
    for name, r in by_name.items():
        assert r["logged"], (name, r.get("error"))
        assert r["equal"], name
    large = by_name["large.bin"]
    assert large["up_extra_mb"] < MAX_EXTRA_MB, large
    assert large["down_extra_mb"] < MAX_EXTRA_MB, large
    assert server_mem.extra < MAX_EXTRA_MB, server_mem.extra
    # Downloads were streamed from the bucket: nothing staged on the server's disk (which is
    # memory on Cloud Run). Only the 1 KiB single PUTs pass through MLflow's temporary file.
    assert server_mem.peak_dir_bytes < MiB, server_mem.peak_dir_bytes
    print(f"\n200 MiB proxied: client +{large['up_extra_mb']} MB up, +{large['down_extra_mb']} MB down; "
          f"server tree +{server_mem.extra:.1f} MB (base {server_mem.base:.0f} MB), "
          f"server temp peak {server_mem.peak_dir_bytes} B")

    log = proxied.front.log
    assert not [s for s in log if s.status == 413]
    # Plain code with the two usual variables: the plugin turned on parts from 16 MiB up
    # (client/uploads.py); create + complete crossed the front, the bytes went beside it.
    assert sum(1 for s in log if "/mlflow-artifacts/mpu/complete/" in s.path) == 3
    puts = [s for s in log if s.method == "PUT" and "/mlflow-artifacts/artifacts/" in s.path]
    assert len(puts) == 2 and {p.path.rsplit("/", 1)[-1] for p in puts} == {"tiny.txt", "odd%20name%20%C3%A9.txt"}
    run_id = large["run_id"]
    stored = proxied.objects()
    for name in SIZES:
        assert any(o.endswith(f"/{run_id}/artifacts/data/{name}") for o in stored), (name, stored)
    assert not [o for o in stored if o.startswith(UPLOADS_PREFIX)]
    assert os.listdir(proxied.server_tmp) == []


def test_the_ui_proxy_streams_a_large_artifact_in_bounded_memory(proxied, proxied_upload):
    large = proxied_upload[0]["large.bin"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow_gcp", "ui", "--no-browser", "--port", "0", "--url", proxied.front.url],
        env=clean_env(MLFLOW_GCP_CREDENTIALS_FILE=str(proxied.key_file)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        match = re.search(r"at (http://127\.0\.0\.1:\d+)(/\?token=\S+) ", proc.stdout.readline())
        assert match, proc.stderr.read() if proc.poll() is not None else "no address line"
        browser = requests.Session()  # one that opened the printed address: it holds the cookie
        assert browser.get(match.group(1) + match.group(2), timeout=30).status_code == 200
        # The path the UI's artifact view fetches for a proxied run.
        tail = large["artifact_uri"].removeprefix("mlflow-artifacts:/")
        url = f"{match.group(1)}/ajax-api/2.0/mlflow-artifacts/artifacts/{tail}/data/large.bin"
        digest, size = hashlib.sha256(), 0
        with TreePeak(proc.pid) as ui_mem, TreePeak(proxied.server.proc.pid, watch_dir=proxied.server_tmp) as srv:
            with browser.get(url, stream=True, timeout=120) as resp:
                assert resp.status_code == 200, resp.text[:300]
                for block in resp.iter_content(1 << 20):
                    digest.update(block)
                    size += len(block)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert size == large["size"] and digest.hexdigest() == large["sha256"]
    assert ui_mem.extra < MAX_EXTRA_MB, ui_mem.extra
    assert srv.extra < MAX_EXTRA_MB and srv.peak_dir_bytes == 0, (srv.extra, srv.peak_dir_bytes)
    print(f"\n200 MiB through mlflow-gcp ui: proxy +{ui_mem.extra:.1f} MB, server +{srv.extra:.1f} MB")


def test_a_failed_part_leaves_no_part_objects_and_no_temp_files(proxied, tmp_path):
    proxied.hop.fail_put_containing = "part-00002"
    try:
        results, _ = proxied.run_client(tmp_path, {"broken.bin": 40 * MiB})
    finally:
        proxied.hop.fail_put_containing = None
    assert proxied.hop.failed, "the injected failure was never hit"
    (r,) = results
    assert not r["logged"] and "part" in r["error"], r
    stored = proxied.objects()
    assert not [o for o in stored if o.startswith(UPLOADS_PREFIX)], stored
    assert not [o for o in stored if o.endswith("/broken.bin")], stored
    assert os.listdir(proxied.server_tmp) == []
    aborts = [s for s in proxied.front.log if "/mlflow-artifacts/mpu/abort/" in s.path]
    assert aborts and all(s.status == 200 for s in aborts)


def test_stock_client_settings_hit_the_cap_past_32_mib(proxied, tmp_path):
    """MLflow's own behaviour (one PUT per file), which the plugin's defaults replace: 413."""
    results, _ = proxied.run_client(tmp_path, {"stock.bin": 33 * MiB}, MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD="false")
    (r,) = results
    assert not r["logged"] and "413" in r["error"], r
    assert any(s.status == 413 for s in proxied.front.log)


@pytest.fixture(scope="module")
def direct(start_server, new_database, gcs_emulator, tmp_path_factory):
    d = _deploy(start_server, new_database, gcs_emulator, tmp_path_factory, "direct")
    yield d
    d.server.stop()
    d.front.close()
    d.hop.close()
    d.idp.close()


def test_direct_mode_client_writes_the_bucket_itself(direct, tmp_path, gcs_emulator):
    spec = {"tiny.txt": 1024, "large.bin": 200 * MiB}
    results, stderr = direct.run_client(tmp_path, spec, STORAGE_EMULATOR_HOST=gcs_emulator.host)
    by_name = {r["name"]: r for r in results}
    assert set(by_name) == set(spec), stderr[-2000:]
    for name, r in by_name.items():
        assert r["logged"] and r["equal"], (name, r)
    assert by_name["large.bin"]["up_extra_mb"] < MAX_EXTRA_MB, by_name["large.bin"]
    assert by_name["large.bin"]["down_extra_mb"] < MAX_EXTRA_MB, by_name["large.bin"]
    print(f"\n200 MiB direct: client +{by_name['large.bin']['up_extra_mb']} MB up, "
          f"+{by_name['large.bin']['down_extra_mb']} MB down")
    # Only metadata crossed the front; the artifact bytes went to the bucket.
    assert not [s for s in direct.front.log if "/mlflow-artifacts/" in s.path]
    stored = direct.objects()
    run_id = results[0]["run_id"]
    assert any(o.endswith(f"/{run_id}/artifacts/data/large.bin") for o in stored), stored
