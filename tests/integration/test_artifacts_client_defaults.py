"""The gcp plugin turns on MLflow's proxied multipart upload unless the user chose otherwise."""

from __future__ import annotations

from mlflow_gcp.client import uploads
from mlflow_gcp.client.auth import GcpRequestAuthProvider


def test_defaults_fill_only_what_the_user_left_unset():
    env = {"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false", "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": " "}
    uploads.apply_defaults(env)
    assert env == {"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
                   "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(16 * 1024 * 1024)}


def test_the_provider_applies_them_when_mlflow_asks_for_auth(monkeypatch):
    for name in uploads.DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    GcpRequestAuthProvider().get_auth()
    from mlflow.environment_variables import (
        MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD,
        MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE,
    )

    assert MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD.get() is True
    # Under Cloud Run's 32 MiB cap, with room to spare.
    assert MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE.get() == 16 * 1024 * 1024
