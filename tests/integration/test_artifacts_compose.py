"""The server's multipart steps against the GCS emulator: many parts (a compose tree), gaps, abort.

The parts are written the way the MLflow client writes them: a plain PUT to each signed URL.
"""

from __future__ import annotations

import os

import pytest
import requests
from google.cloud import storage
from mlflow.entities.multipart_upload import MultipartUploadPart
from mlflow.exceptions import MlflowException

from mlflow_gcp.server import artifacts_gcs
from tests.support.idp import LocalIdentityProvider


@pytest.fixture
def repo(gcs_emulator, tmp_path, monkeypatch):
    with LocalIdentityProvider() as idp:
        key = idp.write_key_file(tmp_path / "server.json", "mlflow-server@test-project.iam.gserviceaccount.com")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.setattr(artifacts_gcs.UploadableGCSArtifactRepository, "_signing", None)
    bucket = gcs_emulator.new_bucket("compose")
    return artifacts_gcs.UploadableGCSArtifactRepository(f"gs://{bucket}/root"), bucket


def _objects(bucket: str) -> list[str]:
    return sorted(b.name for b in storage.Client().bucket(bucket).list_blobs())


def _put_parts(create, blocks) -> list[MultipartUploadPart]:
    parts = []
    for cred, block in zip(create.credentials, blocks, strict=True):
        assert "Authorization" not in cred.headers
        requests.put(cred.url, data=block, headers=cred.headers, timeout=30).raise_for_status()
        parts.append(MultipartUploadPart(cred.part_number, ""))
    return parts


def test_70_parts_compose_in_a_tree_into_one_byte_equal_object_and_leave_nothing(repo):
    r, bucket = repo
    blocks = [os.urandom(1024 + i) for i in range(70)]  # 70 > 32: two levels of compose
    create = r.create_multipart_upload("model.pkl", len(blocks), "1/run/artifacts/model")
    parts = _put_parts(create, blocks)
    r.complete_multipart_upload("model.pkl", create.upload_id, parts, "1/run/artifacts/model")
    assert _objects(bucket) == ["root/1/run/artifacts/model/model.pkl"]
    blob = storage.Client().bucket(bucket).get_blob("root/1/run/artifacts/model/model.pkl")
    assert blob.download_as_bytes() == b"".join(blocks)


def test_missing_or_gapped_parts_are_a_clear_error_and_abort_clears_them(repo):
    r, bucket = repo
    create = r.create_multipart_upload("data.bin", 3, "x")
    parts = _put_parts(create, [b"a" * 10, b"b" * 10, b"c" * 10])
    with pytest.raises(MlflowException, match="without gaps"):
        r.complete_multipart_upload("data.bin", create.upload_id, [parts[0], parts[2]], "x")
    storage.Client().bucket(bucket).blob(artifacts_gcs.part_name(create.upload_id, 2)).delete()
    with pytest.raises(MlflowException, match="missing parts"):
        r.complete_multipart_upload("data.bin", create.upload_id, parts, "x")
    r.abort_multipart_upload("data.bin", create.upload_id, "x")
    assert _objects(bucket) == []


def test_part_counts_outside_mlflows_range_are_refused(repo):
    r, _ = repo
    with pytest.raises(MlflowException, match="num_parts"):
        r.create_multipart_upload("f", artifacts_gcs.MAX_PARTS_PER_REQUEST + 1)
