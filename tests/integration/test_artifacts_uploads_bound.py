"""Multipart uploads against another invoker (docs/security.md, "Artifact uploads"), on the real
server with its artifact root at the bucket's root (as `up` deploys it), the GCS emulator and
MLflow's own client.

An invoker who learns a victim's upload id cannot list, read or write the uploads prefix through
the artifact API, nor complete or abort the upload into another path, nor complete it with fewer
parts; one request cannot ask for more than MAX_PARTS_PER_REQUEST signed URLs, and MLflow's client
is told how to fit. The victim's upload still completes, byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
import requests
from google.cloud import storage

from mlflow_gcp.server import artifacts_gcs
from tests.integration.artifacts_support import CLIENT_SCRIPT, MiB
from tests.reliability.routes import raw_request
from tests.support.clientenv import clean_env
from tests.support.idp import LocalIdentityProvider

pytestmark = pytest.mark.slow

API = "/api/2.0/mlflow-artifacts"


@pytest.fixture(scope="module")
def server(start_server, gcs_emulator, tmp_path_factory):
    base = tmp_path_factory.mktemp("bound")
    with LocalIdentityProvider() as idp:  # the key signs part URLs; the emulator needs no token
        key = idp.write_key_file(base / "server.json", "mlflow-server@test-project.iam.gserviceaccount.com")
    bucket = gcs_emulator.new_bucket("bound")
    running = start_server({"DB_URI": f"sqlite:///{base / 'mlflow.db'}", "ARTIFACT_ROOT": f"gs://{bucket}",
                            "STORAGE_EMULATOR_HOST": gcs_emulator.host, "GOOGLE_APPLICATION_CREDENTIALS": str(key)})
    return running, bucket, base


def _post(server, path: str, body: dict) -> tuple[int, dict | bytes]:
    status, out = raw_request(server.url, "POST", path, {}, json.dumps(body).encode())
    try:
        return status, json.loads(out)
    except ValueError:
        return status, out


def _objects(bucket: str, prefix: str = "") -> list[str]:
    return sorted(b.name for b in storage.Client().bucket(bucket).list_blobs(prefix=prefix))


def _victim_upload(server, victim_dir: str, blocks: list[bytes]) -> tuple[str, list[dict]]:
    status, create = _post(server, f"{API}/mpu/create/{victim_dir}", {"path": "model.bin", "num_parts": len(blocks)})
    assert status == 200, create
    parts = []
    for cred, block in zip(create["credentials"], blocks, strict=True):
        requests.put(cred["url"], data=block, timeout=30).raise_for_status()
        parts.append({"part_number": cred["part_number"], "etag": ""})
    return create["upload_id"], parts


def test_another_invoker_cannot_reach_or_take_over_a_victims_upload(server):
    srv, bucket, _base = server
    victim_dir = f"1/{uuid.uuid4().hex}/artifacts/model"
    blocks = [b"a" * 1000, b"b" * 1000, b"c" * 10]
    upload_id, parts = _victim_upload(srv, victim_dir, blocks)
    upload_objects = _objects(bucket, artifacts_gcs.UPLOADS_PREFIX)
    assert len([name for name in upload_objects if "/part-" in name]) == 3

    # The uploads prefix is not an artifact: not listed, not listable, not readable, not writable.
    status, root = raw_request(srv.url, "GET", f"{API}/artifacts")
    assert status == 200 and b"mlflow-gcp-uploads" not in root, root
    for path in (f"{API}/artifacts?path=mlflow-gcp-uploads", f"{API}/artifacts?path=mlflow-gcp-uploads/{upload_id}"):
        status, body = raw_request(srv.url, "GET", path)
        assert status == 403 and b'"files"' not in body, (path, status, body[:200])
    for name in upload_objects:
        status, body = raw_request(srv.url, "GET", f"{API}/artifacts/{name}")
        assert status == 403 and b"aaaa" not in body, (name, status)
        assert raw_request(srv.url, "PUT", f"{API}/artifacts/{name}", {"Content-Type": "application/octet-stream"},
                           b"tampered")[0] == 403, name
        assert raw_request(srv.url, "DELETE", f"{API}/artifacts/{name}")[0] == 403, name
    assert _objects(bucket, artifacts_gcs.UPLOADS_PREFIX) == upload_objects

    # Knowing the id is not enough: no completing into another path, no aborting from one.
    thief_dir = f"2/{uuid.uuid4().hex}/artifacts"
    status, body = _post(srv, f"{API}/mpu/complete/{thief_dir}",
                         {"path": "model.bin", "upload_id": upload_id, "parts": parts})
    assert status == 403 and "another artifact path" in body["message"], body
    status, body = _post(srv, f"{API}/mpu/abort/{thief_dir}", {"path": "model.bin", "upload_id": upload_id})
    assert status == 403, body
    # Nor a truncated artifact at the victim's own path.
    status, body = _post(srv, f"{API}/mpu/complete/{victim_dir}",
                         {"path": "model.bin", "upload_id": upload_id, "parts": parts[:2]})
    assert status == 400 and "3 parts" in body["message"], body
    assert _objects(bucket, artifacts_gcs.UPLOADS_PREFIX) == upload_objects
    assert not _objects(bucket, "2/")

    # The victim completes as if nothing happened.
    status, body = _post(srv, f"{API}/mpu/complete/{victim_dir}",
                         {"path": "model.bin", "upload_id": upload_id, "parts": parts})
    assert status == 200, body
    assert raw_request(srv.url, "GET", f"{API}/artifacts/{victim_dir}/model.bin") == (200, b"".join(blocks))
    assert _objects(bucket, artifacts_gcs.UPLOADS_PREFIX) == []
    # Completed (or never created) ids are refused with one clear line.
    status, body = _post(srv, f"{API}/mpu/abort/{victim_dir}", {"path": "model.bin", "upload_id": upload_id})
    assert status == 400 and "not one this server has open" in body["message"], body


def test_one_request_asks_for_a_bounded_number_of_part_urls(server):
    srv, bucket, _base = server
    cap = artifacts_gcs.MAX_PARTS_PER_REQUEST
    status, body = _post(srv, f"{API}/mpu/create/cap", {"path": "big.bin", "num_parts": cap + 1})
    assert status == 400 and "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE" in body["message"], body
    assert _objects(bucket, artifacts_gcs.UPLOADS_PREFIX) == []
    status, body = _post(srv, f"{API}/mpu/create/cap", {"path": "big.bin", "num_parts": cap})
    assert status == 200 and len(body["credentials"]) == cap
    assert _post(srv, f"{API}/mpu/abort/cap", {"path": "big.bin", "upload_id": body["upload_id"]})[0] == 200
    # 5 GiB at MLflow's default 10 MiB parts is 512 parts: well inside the cap.
    assert cap * 10 * MiB >= 5 * 1024 * MiB * 2


def _client(srv, workdir, spec: dict[str, int], **env) -> list[dict]:
    workdir.mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, f"bound-{uuid.uuid4().hex[:8]}", str(workdir),
         json.dumps([{"name": n, "size": s} for n, s in spec.items()])],
        env=clean_env(MLFLOW_TRACKING_URI=srv.url, MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD="true",
                      MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE=str(MiB), MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                      TMPDIR=str(workdir), **env),
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_mlflows_client_uploads_in_parts_and_is_told_when_it_asks_too_many(server):
    srv, bucket, base = server
    (ok,) = _client(srv, base / "ok", {"parts.bin": 3 * MiB + 5}, MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE=str(MiB))
    assert ok["logged"] and ok["equal"], ok.get("error")
    assert any(n.endswith("/artifacts/data/parts.bin") for n in _objects(bucket))
    # A file in more parts than the cap: MLflow's client reports the server's sentence.
    chunk = 1024
    (refused,) = _client(srv, base / "refused", {"many.bin": chunk * (artifacts_gcs.MAX_PARTS_PER_REQUEST + 1)},
                         MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE=str(chunk))
    assert not refused["logged"]
    assert "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE" in refused["error"], refused["error"]
    assert _objects(bucket, artifacts_gcs.UPLOADS_PREFIX) == []
