"""Compressed answers from our server: the UI's files from gzip copies made once, large JSON
answers gzip-compressed for clients that accept it, artifacts never; and `mlflow-gcp ui` passes
compressed bodies through untouched. What a client decodes is what MLflow serves uncompressed.
"""

from __future__ import annotations

import gzip
import re
import uuid
from pathlib import Path

import pytest
import requests

from mlflow_gcp.server import uiassets

pytestmark = pytest.mark.slow

IDENTITY = {"Accept-Encoding": "identity"}
GZIP = {"Accept-Encoding": "gzip, deflate"}


@pytest.fixture(scope="module")
def ours(start_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compression")
    server = start_server({"DB_URI": f"sqlite:///{tmp / 'mlflow.db'}", "ARTIFACT_ROOT": str(tmp / "artifacts"),
                           "MLFLOW_GCP_UI_CACHE": str(tmp / "ui-cache")})
    server.ui_cache = tmp / "ui-cache"
    return server


def main_script() -> str:
    """The path of the UI's main script, as index.html names it."""
    build = uiassets.build_dir()
    return re.search(r'src="(static-files/static/js/main\.[0-9a-f]+\.js)"', (build / "index.html").read_text()).group(1)


def raw_get(url: str, headers: dict) -> requests.Response:
    """The body as it crossed the wire (not decoded) in `.wire`."""
    resp = requests.get(url, headers=headers, stream=True, timeout=120)
    resp.wire = resp.raw.read(decode_content=False)
    return resp


def vary(resp) -> set[str]:
    return {part.strip().lower() for part in resp.headers.get("vary", "").split(",") if part.strip()}


def test_ui_files_are_gzip_for_browsers_and_decode_to_mlflows_files(ours):
    script = main_script()
    original = (uiassets.build_dir() / script.removeprefix("static-files/")).read_bytes()
    plain = raw_get(f"{ours.url}/{script}", IDENTITY)
    packed = raw_get(f"{ours.url}/{script}", GZIP)

    assert plain.status_code == 200 and plain.wire == original
    assert "content-encoding" not in plain.headers and "Accept-Encoding" in plain.headers["vary"]
    assert packed.status_code == 200 and packed.headers["content-encoding"] == "gzip"
    assert vary(packed) == vary(plain) == {"origin", "accept-encoding"}
    assert gzip.decompress(packed.wire) == original
    # MLflow's security layer answered both (its headers; its Host check below).
    for name in ("x-content-type-options", "x-frame-options", "content-disposition", "last-modified"):
        assert packed.headers[name] == plain.headers[name], name
    assert int(packed.headers["content-length"]) == len(packed.wire) < len(original) / 3
    # Same type as MLflow's answer; the hashed name is cached for a year, immutable.
    assert packed.headers["content-type"] == plain.headers["content-type"]
    assert packed.headers["cache-control"] == "public, max-age=31536000, immutable"
    # Compressed once, on the first request (no image build step here), kept on disk, readable
    # by other users (the image compresses as root at build and serves as uid 10001).
    copies = list(ours.ui_cache.rglob("main.*.gz"))
    assert copies and all(p.stat().st_mode & 0o044 == 0o044 for p in copies)

    again = raw_get(f"{ours.url}/{script}", {**GZIP, "If-None-Match": packed.headers["etag"]})
    assert again.status_code == 304 and again.wire == b""
    head = requests.head(f"{ours.url}/{script}", headers=GZIP, timeout=60)
    assert head.status_code == 200 and head.headers["content-length"] == packed.headers["content-length"]
    # A range is MLflow's, of the file as it is.
    part = raw_get(f"{ours.url}/{script}", {**GZIP, "Range": "bytes=0-99"})
    assert part.status_code == 206 and part.wire == original[:100] and "content-encoding" not in part.headers


def test_mlflows_host_check_still_applies(ours):
    script = main_script()
    refused = raw_get(f"{ours.url}/{script}", {**GZIP, "Host": "evil.example"})
    plain = raw_get(f"{ours.url}/{script}", {**IDENTITY, "Host": "evil.example"})
    assert refused.status_code == plain.status_code == 403
    assert refused.wire == plain.wire and "content-encoding" not in refused.headers


def test_only_files_of_the_build_are_served(ours, tmp_path):
    outside = raw_get(f"{ours.url}/static-files/..%2F..%2F__init__.py", GZIP)
    assert "content-encoding" not in outside.headers and outside.status_code == 404
    missing = raw_get(f"{ours.url}/static-files/static/js/nothing.js", GZIP)
    assert missing.status_code == 404 and "content-encoding" not in missing.headers


def test_large_json_answers_are_gzip_and_mlflows_client_reads_them(ours):
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(ours.url)
    exp = client.create_experiment(f"compress-{uuid.uuid4().hex[:6]}")
    for n in range(30):
        run = client.create_run(exp, run_name=f"r{n}")
        client.log_batch(run.info.run_id, params=[Param(f"p{k}", "v" * 20) for k in range(5)])
    url = f"{ours.url}/api/2.0/mlflow/runs/search"
    body = {"experiment_ids": [exp], "max_results": 100}
    plain = requests.post(url, json=body, headers=IDENTITY, timeout=60)
    packed = requests.post(url, json=body, headers=GZIP, stream=True, timeout=60)
    wire = packed.raw.read(decode_content=False)
    assert plain.status_code == packed.status_code == 200
    assert "content-encoding" not in plain.headers and len(plain.content) > 2048
    assert packed.headers["content-encoding"] == "gzip" and "Accept-Encoding" in packed.headers["vary"]
    assert gzip.decompress(wire) == plain.content
    assert int(packed.headers["content-length"]) == len(wire) < len(plain.content) / 3
    # MLflow's own client asks for gzip and reads the same runs.
    assert len(client.search_runs([exp], max_results=100)) == 30
    # A small answer stays as it is: same headers as without gzip (no gain to be had).
    one = {"experiment_ids": [exp], "max_results": 1}
    small, as_is = (requests.post(url, json=one, headers=h, timeout=60) for h in (GZIP, IDENTITY))
    assert small.content == as_is.content and len(small.content) < 2048
    del small.headers["date"], as_is.headers["date"]
    assert small.headers == as_is.headers and "content-encoding" not in small.headers


def test_artifacts_are_never_compressed(ours, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(ours.url)
    exp = client.create_experiment(f"compress-art-{uuid.uuid4().hex[:6]}")
    run_id = client.create_run(exp).info.run_id
    payload = ('{"weights": [' + ",".join(str(i) for i in range(5000)) + "]}").encode()
    src = tmp_path / "model.json"
    src.write_bytes(payload)
    client.log_artifact(run_id, str(src))
    got = Path(client.download_artifacts(run_id, "model.json", str(tmp_path / "down")))
    assert got.read_bytes() == payload
    artifact_uri = client.get_run(run_id).info.artifact_uri
    path = artifact_uri.split("mlflow-artifacts:/", 1)[1]
    for url in (f"{ours.url}/api/2.0/mlflow-artifacts/artifacts/{path}/model.json",
                f"{ours.url}/get-artifact?path=model.json&run_uuid={run_id}"):
        resp = raw_get(url, GZIP)
        assert resp.status_code == 200 and "content-encoding" not in resp.headers, url
        assert resp.wire == payload, url


class FixedToken:
    """Stands in for Google's ID token endpoint (the proxy's token cache); our server ignores
    the token, only what the proxy does with the answer matters here."""

    def get(self, audience: str) -> str:
        return "id-token"

    def refresh_after_rejection(self, audience: str, token: str) -> str:
        return token


def test_the_ui_proxy_passes_compressed_bodies_through_untouched(ours):
    from mlflow_gcp.client.proxy import UiProxy

    script = main_script()
    direct = raw_get(f"{ours.url}/{script}", GZIP)
    proxy = UiProxy(ours.url, 0, cache=FixedToken()).start()
    try:
        http = requests.Session()
        assert http.get(proxy.login_url, timeout=30).status_code == 200
        resp = http.get(f"{proxy.url}/{script}", headers=GZIP, stream=True, timeout=120)
        wire = resp.raw.read(decode_content=False)
    finally:
        proxy.shutdown()
    assert resp.status_code == 200 and resp.headers["content-encoding"] == "gzip"
    assert vary(resp) == vary(direct)
    assert wire == direct.wire


def test_with_identity_on_the_ui_files_need_a_caller_too(start_server, tmp_path):
    server = start_server({"DB_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "ARTIFACT_ROOT": str(tmp_path / "art"),
                           "MLFLOW_GCP_UI_CACHE": str(tmp_path / "ui-cache"), "IDENTITY_DEV_HEADER": "1"})
    url = f"{server.url}/{main_script()}"
    anonymous = raw_get(url, GZIP)
    assert anonymous.status_code == 401 and "content-encoding" not in anonymous.headers
    known = raw_get(url, {**GZIP, "x-mlflow-gcp-dev-user": "dev@example.com"})
    assert known.status_code == 200 and known.headers["content-encoding"] == "gzip"
