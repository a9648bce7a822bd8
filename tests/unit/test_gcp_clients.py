"""Client construction: endpoints under emulation, servicePaths, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import googleapiclient

from mlflow_gcp.gcp import clients

DOCS = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"


def test_service_paths_match_the_discovery_documents():
    for api, (version, service_path) in clients.APIS.items():
        doc = json.loads((DOCS / f"{api}.{version}.json").read_text())
        assert doc["servicePath"] == service_path, api


def test_emulation_sends_every_api_under_root_api():
    c = clients.Clients.from_env("acme-ml-prod", env={"MLFLOW_GCP_API_ROOT": "http://127.0.0.1:9/"})
    assert c.emulated
    assert c.api("storage").buckets().get(bucket="b").uri.startswith("http://127.0.0.1:9/storage/storage/v1/b/b")
    run = c.api("run").projects().locations().services().get(name="projects/p/locations/r/services/s")
    assert run.uri.startswith("http://127.0.0.1:9/run/v2/projects/p/locations/r/services/s")
    assert c.api("run") is c.api("run"), "built once"


def test_media_uploads_follow_the_emulated_root():
    from googleapiclient.http import MediaInMemoryUpload

    c = clients.Clients.from_env("acme-ml-prod", env={"MLFLOW_GCP_API_ROOT": "http://127.0.0.1:9"})
    req = c.api("storage").objects().insert(bucket="b", name="o", media_body=MediaInMemoryUpload(b"x"))
    c.fix_media_uri(req, "storage")
    assert req.uri.startswith("http://127.0.0.1:9/storage/upload/storage/v1/b/b/o")


def test_the_cli_does_not_import_the_google_client_at_startup():
    code = "import sys, mlflow_gcp.cli.main; print('googleapiclient' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_missing_credentials_give_the_login_hint(monkeypatch, tmp_path):
    from mlflow_gcp.errors import PermissionDenied

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    c = clients.Clients("acme-ml-prod")
    try:
        c.credentials
    except PermissionDenied as err:
        assert "gcloud auth application-default login" in str(err)
    else:  # pragma: no cover - only if this machine has real credentials
        raise AssertionError("expected no credentials here")
