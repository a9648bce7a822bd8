"""mlflow_gcp.server.gcs_emulator (local mode's emulator) answers as the stock gcp-storage-emulator
does, on the paths it replaces (ranged and whole downloads, compose, resumable uploads, soft delete
and restore), with a few MiB of random bytes sent to both emulators and every answer compared."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from mlflow_gcp.server import local

MiB = 1024 * 1024
BUCKET = "bounded-check"
# Metadata that differs between any two emulators (times, generations, ports) is left out.
COMPARED = ("name", "bucket", "size", "contentType", "md5Hash", "crc32c", "etag", "metadata")

pytestmark = pytest.mark.slow


def start_stock() -> tuple[subprocess.Popen, str]:
    """gcp-storage-emulator as installed, none of our paths: the reference."""
    port = local.free_port()
    argv = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
            "--quiet", "--in-memory"]
    proc = local.start_group(argv, dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"http://127.0.0.1:{port}"
    try:
        local.wait_http(f"{host}/storage/v1/b?project=local", proc, 30, "the stock GCS emulator")
    except local.LocalError:
        local.stop_group(proc)
        raise
    return proc, host


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    stock, stock_host = start_stock()
    data = tmp_path_factory.mktemp("bounded-gcs")
    # What local mode starts (`mlflow-gcp local --gcs-emulator` keeps its objects on disk).
    bounded, bounded_host = local.start_emulator(data, None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for host in (stock_host, bounded_host):
            local.create_bucket(host, BUCKET)
        yield {"stock": stock_host, "bounded": bounded_host, "data": data}
    finally:
        local.stop_group(stock, grace=5)
        local.stop_group(bounded, grace=5)


def call(host: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(host + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def both(emulators, method, path, body=None, headers=None):
    return [call(emulators[k], method, path, body, headers) for k in ("stock", "bounded")]


def meta(body: bytes) -> dict:
    obj = json.loads(body)
    return {k: obj.get(k) for k in COMPARED}


def upload(emulators, name: str, data: bytes, content_type: str = "application/x-test") -> None:
    for status, _h, body in both(emulators, "POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}",
                                 data, {"Content-Type": content_type}):
        assert status == 200, body


def compose(emulators, dest: str, sources: list[str], destination: dict | None = None):
    payload = json.dumps({"destination": destination or {}, "sourceObjects": [{"name": s} for s in sources]})
    return both(emulators, "POST", f"/storage/v1/b/{BUCKET}/o/{dest}/compose", payload.encode(),
                {"Content-Type": "application/json"})


def media(name: str) -> str:
    return f"/download/storage/v1/b/{BUCKET}/o/{name}?alt=media"


def test_compose_and_ranged_reads_answer_as_the_stock_emulator(emulators):
    rng = random.Random(6)
    parts = [rng.randbytes(n) for n in (3 * MiB + 17, 2 * MiB, 1, MiB - 5)]
    for i, data in enumerate(parts):
        upload(emulators, f"p/{i}", data)

    level1 = compose(emulators, "c/first", ["p/0", "p/1"])
    level2 = compose(emulators, "c/all", ["c/first", "p/2", "p/3"])
    for (s_status, _sh, s_body), (b_status, _bh, b_body) in (level1, level2):
        assert s_status == b_status == 200
        assert meta(s_body) == meta(b_body)
    assert json.loads(level2[1][2])["size"] == sum(map(len, parts))

    whole = b"".join(parts)
    stock, bounded = both(emulators, "GET", media("c/all"))
    assert stock[0] == bounded[0] == 200
    assert stock[2] == bounded[2] == whole
    assert stock[1]["X-Goog-Hash"] == bounded[1]["X-Goog-Hash"]

    size = len(whole)
    for header in (f"bytes=0-{4 * MiB - 1}", f"bytes={4 * MiB}-{8 * MiB - 1}", "bytes=12345-",
                   f"bytes={size - 3}-{size + 100}", f"bytes={size + 10}-", "bytes=5-2", "items=0-3"):
        stock, bounded = both(emulators, "GET", media("c/all"), headers={"Range": header})
        assert (stock[0], stock[1].get("Content-Range"), stock[2]) == (
            bounded[0], bounded[1].get("Content-Range"), bounded[2]), header
        assert ("X-Goog-Hash" in stock[1]) == ("X-Goog-Hash" in bounded[1]), header


def test_compose_refusals_match(emulators):
    upload(emulators, "r/a", b"a" * 1000)
    missing = compose(emulators, "r/out", ["r/a", "r/nope"])
    assert missing[0][0] == missing[1][0] == 404
    wrong_md5 = compose(emulators, "r/out", ["r/a"], {"md5Hash": "AAAAAAAAAAAAAAAAAAAAAA=="})
    assert wrong_md5[0][0] == wrong_md5[1][0] == 400
    assert json.loads(wrong_md5[0][2]) == json.loads(wrong_md5[1][2])
    stock, bounded = both(emulators, "GET", f"/storage/v1/b/{BUCKET}/o/r%2Fout")
    assert stock[0] == bounded[0] == 404
    assert not list((emulators["data"] / ".cloudstorage" / "_scratch").iterdir())  # nothing half-made left


def test_resumable_upload_in_chunks_matches(emulators):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    data = random.Random(7).randbytes(5 * MiB + 333)
    metas = []
    for key in ("stock", "bounded"):
        client = storage.Client(project="test", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": emulators[key]})
        blob = client.bucket(BUCKET).blob("resumable/obj", chunk_size=256 * 1024 * 4)
        blob.upload_from_string(data, content_type="application/x-test")
        blob.reload()
        metas.append({k: getattr(blob, k) for k in ("size", "md5_hash", "crc32c", "content_type")})
        assert blob.download_as_bytes() == data  # the client checks X-Goog-Hash on whole reads
    assert metas[0] == metas[1]


def test_soft_delete_and_restore_match(emulators):
    data = random.Random(8).randbytes(2 * MiB)
    upload(emulators, "d/obj", data)
    generations = []
    for key in ("stock", "bounded"):
        status, _h, body = call(emulators[key], "GET", f"/storage/v1/b/{BUCKET}/o/d%2Fobj")
        generations.append(json.loads(body)["generation"])
        assert call(emulators[key], "DELETE", f"/storage/v1/b/{BUCKET}/o/d%2Fobj")[0] == 200  # stock's answer
    listed = [[meta(json.dumps(item).encode()) for item in json.loads(body)["items"]]
              for _s, _h, body in both(emulators, "GET", f"/storage/v1/b/{BUCKET}/o?prefix=d/&softDeleted=true")]
    assert len(listed[0]) == 1 and listed[0] == listed[1]
    for key, generation in zip(("stock", "bounded"), generations):
        path = f"/storage/v1/b/{BUCKET}/o/d%2Fobj/restore?generation={generation}"
        assert call(emulators[key], "POST", path)[0] == 200
        assert call(emulators[key], "GET", media("d%2Fobj"))[2] == data
