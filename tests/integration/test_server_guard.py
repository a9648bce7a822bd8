"""The guard on the real server (server/guard.py, docs/security.md): a forged Host is refused on a
streamed gs:// artifact download as on experiments/search; a cross-site text/plain POST cannot
reach MLflow's AI gateway; the gateway is off (404) unless GATEWAY=on, and then its secrets are
encrypted with the deployment's passphrase, which appears in no log and no process's argv."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from tests.conftest import process_tree
from tests.reliability.routes import raw_request

pytestmark = pytest.mark.slow

SERVICE_HOST = "mlflow-abc123-ew.a.run.app"
FORGED = "rebind.attacker.example:5000"
PASSPHRASE = "kek passphrase 9f3c-" + uuid.uuid4().hex
CROSS_SITE = {"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
              "Content-Type": "text/plain;charset=UTF-8"}
INVOCATION = json.dumps({"messages": [{"role": "user", "content": "spend the stored key"}]}).encode()


@pytest.fixture(scope="module")
def gcs_server(start_server, gcs_emulator, tmp_path_factory):
    data = tmp_path_factory.mktemp("guard")
    bucket = gcs_emulator.new_bucket()
    return start_server({"DB_URI": f"sqlite:///{data / 'mlflow.db'}", "ARTIFACT_ROOT": f"gs://{bucket}",
                         "STORAGE_EMULATOR_HOST": gcs_emulator.host, "ALLOWED_HOSTS": SERVICE_HOST})


@pytest.fixture(scope="module")
def gateway_server(start_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("gateway")
    server = start_server({"DB_URI": f"sqlite:///{data / 'mlflow.db'}", "ARTIFACT_ROOT": str(data / "artifacts"),
                           "ALLOWED_HOSTS": SERVICE_HOST, "GATEWAY": "on", "MLFLOW_CRYPTO_KEK_PASSPHRASE": PASSPHRASE})
    return server, data / "mlflow.db"


def _as_service(headers: dict | None = None) -> dict:
    return {"Host": SERVICE_HOST, **(headers or {})}


def test_a_forged_host_is_refused_on_a_streamed_artifact_download(gcs_server):
    path = f"/api/2.0/mlflow-artifacts/artifacts/guard/{uuid.uuid4().hex}/model.bin"
    assert raw_request(gcs_server.url, "PUT", path, _as_service({"Content-Type": "application/octet-stream"}),
                       b"weights")[0] == 200
    assert raw_request(gcs_server.url, "GET", path, _as_service()) == (200, b"weights")
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    for target in (search, path, path.replace("/api/", "/ajax-api/")):
        for method in ("GET", "HEAD"):
            status, body = raw_request(gcs_server.url, method, target, {"Host": FORGED})
            assert status == 403, (method, target, status, body[:80])
            assert method == "HEAD" or b"Invalid Host header" in body


def test_a_forged_host_is_refused_on_the_fast_log_batch(gcs_server):
    status, out = raw_request(gcs_server.url, "POST", "/api/2.0/mlflow/experiments/create", _as_service(),
                              json.dumps({"name": f"guard-{uuid.uuid4().hex[:8]}"}).encode())
    assert status == 200, out
    status, out = raw_request(gcs_server.url, "POST", "/api/2.0/mlflow/runs/create", _as_service(),
                              json.dumps({"experiment_id": json.loads(out)["experiment_id"]}).encode())
    run_id = json.loads(out)["run"]["info"]["run_id"]
    batch = json.dumps({"run_id": run_id, "metrics": [{"key": "loss", "value": 1.0, "timestamp": 1, "step": 0}]})
    status, body = raw_request(gcs_server.url, "POST", "/api/2.0/mlflow/runs/log-batch", {"Host": FORGED},
                               batch.encode())
    assert (status, b"Invalid Host header" in body) == (403, True)
    status, out = raw_request(gcs_server.url, "GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}", _as_service())
    assert "metrics" not in json.loads(out)["run"]["data"]  # nothing was written


def test_a_cross_site_text_plain_post_does_not_reach_the_gateway(gateway_server):
    server, _db = gateway_server
    path = "/gateway/chat/mlflow/invocations"
    # A script (no browser headers) reaches the gateway, which says the endpoint does not exist.
    status, body = raw_request(server.url, "POST", path, _as_service({"Content-Type": "application/json"}),
                               INVOCATION)
    assert status not in (403, 501) and b"AI gateway is off" not in body, (status, body[:200])
    # The page's "simple" request, which needs no preflight, is refused before the gateway.
    status, body = raw_request(server.url, "POST", path, _as_service(CROSS_SITE), INVOCATION)
    assert (status, body) == (403, b"Cross-origin request blocked")
    no_origin = {k: v for k, v in CROSS_SITE.items() if k != "Origin"}
    assert raw_request(server.url, "POST", path, _as_service(no_origin), INVOCATION)[0] == 403


def test_the_gateway_is_off_by_default(gcs_server):
    for method, path in [("POST", "/gateway/chat/mlflow/invocations"),
                         ("POST", "/gateway/mlflow/v1/chat/completions"),
                         ("POST", "/api/3.0/mlflow/gateway/secrets/create"),
                         ("GET", "/ajax-api/3.0/mlflow/gateway/secrets/config")]:
        status, body = raw_request(gcs_server.url, method, path, _as_service({"Content-Type": "application/json"}),
                                   b"{}" if method == "POST" else None)
        assert status == 404 and b"AI gateway is off" in body, (path, status, body[:200])
    status, body = raw_request(gcs_server.url, "GET", "/ajax-api/3.0/mlflow/server-info", _as_service())
    assert status == 200 and json.loads(body)["features_enabled"]["gateway"] is False, body[:300]


def _decrypts_with(db: Path, passphrase: str) -> bool:
    from mlflow.utils.crypto import KEKManager, _decrypt_secret

    with sqlite3.connect(db) as conn:
        secret_id, name, value, dek = conn.execute(
            "SELECT secret_id, secret_name, encrypted_value, wrapped_dek FROM secrets").fetchone()
    try:
        _decrypt_secret(value, dek, KEKManager(passphrase=passphrase), secret_id, name)
    except Exception:
        return False
    return True


def test_gateway_secrets_use_the_deployments_passphrase_which_is_never_shown(gateway_server):
    from mlflow.utils.crypto import DEFAULT_KEK_PASSPHRASE

    server, db = gateway_server
    key = "sk-" + uuid.uuid4().hex
    body = {"secret_name": f"openai-{uuid.uuid4().hex[:6]}", "secret_value": {"api_key": key}, "provider": "openai"}
    status, out = raw_request(server.url, "POST", "/api/3.0/mlflow/gateway/secrets/create", _as_service(),
                              json.dumps(body).encode())
    assert status == 200, out
    assert _decrypts_with(db, PASSPHRASE) and not _decrypts_with(db, DEFAULT_KEK_PASSPHRASE)
    logs = server.output()
    assert PASSPHRASE not in logs and key not in logs
    assert "Using default passphrase" not in logs
    for pid in process_tree(server.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert PASSPHRASE.encode() not in argv
