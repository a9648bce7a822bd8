"""The gcp auth plugin with the real MLflow client, through the Cloud Run front to a real server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid

import pytest
import requests

from mlflow_gcp.client.auth import GcpAuth
from tests.integration.conftest import FRONT_HOST, INVOKER, OUTSIDER
from tests.support.clientenv import clean_env

pytestmark = pytest.mark.slow

PLAIN_MLFLOW_SCRIPT = """
import os, sys, tempfile
import mlflow
from mlflow import MlflowClient

name = sys.argv[1]
mlflow.set_experiment(name)
with mlflow.start_run() as run:
    mlflow.log_param("lr", 0.01)
    for step in range(3):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    path = os.path.join(tempfile.mkdtemp(), "report.txt")
    with open(path, "w") as f:
        f.write("payload-" + name)
    mlflow.log_artifact(path, artifact_path="reports")

client = MlflowClient()
got = client.get_run(run.info.run_id)
out = client.download_artifacts(run.info.run_id, "reports/report.txt", tempfile.mkdtemp())
print("param", got.data.params["lr"])
print("metric", [m.value for m in client.get_metric_history(run.info.run_id, "loss")])
print("artifact", open(out).read())
print("artifact_uri", got.info.artifact_uri)
"""


def _mlflow_env(stack, **extra) -> dict:
    return clean_env(MLFLOW_TRACKING_URI=stack.front.url, MLFLOW_TRACKING_AUTH="gcp",
                     MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", **extra)


def test_plain_mlflow_code_logs_runs_params_metrics_and_artifacts(stack):
    name = f"plugin-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_MLFLOW_SCRIPT, name],
        env=_mlflow_env(stack, MLFLOW_GCP_CREDENTIALS_FILE=str(stack.key_file)),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "param 0.01" in proc.stdout
    assert "metric [1.0, 0.5, 0.3333333333333333]" in proc.stdout
    assert f"artifact payload-{name}" in proc.stdout
    assert "mlflow-artifacts:" in proc.stdout  # proxied artifacts: they crossed the front
    log = stack.front.log
    # set_experiment first looks the name up: a 404 from MLflow itself, not from the front.
    refused = [s for s in log if s.status != 200 and not s.path.endswith("/get-by-name")]
    assert not refused, refused
    assert {s.caller for s in log} == {INVOKER}
    assert any("/mlflow-artifacts/artifacts/" in s.path and s.method == "PUT" for s in log)
    # One process, one audience: one token for the whole session.
    assert stack.idp.issued_count() == 1
    assert stack.idp.issued[0]["aud"] == stack.front.url


def test_without_the_plugin_the_front_refuses(stack):
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_MLFLOW_SCRIPT, "refused"],
        env=clean_env(MLFLOW_TRACKING_URI=stack.front.url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "403" in proc.stderr and "does not have permission" in proc.stderr
    assert stack.front.count(403) >= 1 and stack.front.count(200) == 0
    assert {s.reason for s in stack.front.log} == {"no bearer token"}
    assert stack.idp.issued_count() == 0


def test_session_outliving_tokens_never_sees_a_401(stack, plugin):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.front.url)
    exp_id = client.create_experiment(f"long-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(exp_id).info.run_id
    for hour in range(3):
        client.log_metric(run_id, "loss", 1.0 / (hour + 1), step=hour)
        # Past the token's hour for the client and for the front alike.
        stack.clock.advance(3700)
    client.set_terminated(run_id)

    history = client.get_metric_history(run_id, "loss")
    assert [m.value for m in history] == [1.0, 0.5, 1.0 / 3]
    assert stack.front.count(401) == 0
    assert stack.front.count() == stack.front.count(200)
    # Renewed ahead of expiry: the first token, then one per hour crossed.
    assert plugin.fetches == stack.idp.issued_count() == 4


def test_a_rejected_token_is_refreshed_and_the_request_retried_once(stack, plugin):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.front.url)
    exp_id = client.create_experiment(f"retry-{uuid.uuid4().hex[:8]}")
    # The front's clock runs ahead; the client's cache still trusts its token (clock skew, or
    # a token revoked server-side): the front says 401 once, the plugin recovers.
    plugin.clock = lambda: stack.clock() - 7200
    stack.clock.advance(3700)
    assert client.get_experiment(exp_id).experiment_id == exp_id
    assert stack.front.count(401) == 1
    assert plugin.fetches == 2
    # The refreshed token serves what follows without further 401s.
    client.set_experiment_tag(exp_id, "checked", "yes")
    assert stack.front.count(401) == 1


def test_concurrent_requests_share_one_token_fetch(stack, plugin):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.front.url)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            client.search_experiments(max_results=1)
        except BaseException as err:  # noqa: BLE001 -- reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert stack.front.count(200) == 8
    assert plugin.fetches == 1 and stack.idp.issued_count() == 1


def test_an_authorization_header_set_by_the_caller_is_kept(stack, plugin):
    own = stack.idp.mint(INVOKER, stack.front.url)
    minted = stack.idp.issued_count()
    url = f"{stack.front.url}/api/2.0/mlflow/experiments/search?max_results=1"
    ok = requests.get(url, headers={"Authorization": f"Bearer {own}"}, auth=GcpAuth(), timeout=30)
    assert ok.status_code == 200
    bad = requests.get(url, headers={"Authorization": "Bearer not-a-jwt"}, auth=GcpAuth(),
                       timeout=30)
    # The caller's header went through untouched, and its 401 is the caller's to handle.
    assert bad.status_code == 401 and not bad.history
    assert stack.front.log[-1].reason.startswith("malformed token")
    assert plugin.fetches == 0 and stack.idp.issued_count() == minted


def test_a_caller_without_invoker_gets_403_and_no_retry(stack, plugin, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_GCP_CREDENTIALS_FILE", str(stack.outsider_key_file))
    with pytest.raises(MlflowException, match="403"):
        MlflowClient(tracking_uri=stack.front.url).search_experiments(max_results=1)
    assert [(s.status, s.caller) for s in stack.front.log] == [(403, OUTSIDER)]


def test_audience_override_for_a_custom_audience(stack, plugin, monkeypatch):
    custom = "https://mlflow.example.com"
    stack.front.extra_audiences.add(custom)
    monkeypatch.setenv("MLFLOW_GCP_AUDIENCE", custom)
    url = f"{stack.front.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(url, auth=GcpAuth(), timeout=30).status_code == 200
    assert stack.idp.issued[-1]["aud"] == custom


def test_jobs_on_google_cloud_use_the_metadata_server(stack):
    # google-auth reads the metadata host when imported: a fresh process, pointed at our stand-in.
    host = f"127.0.0.1:{stack.idp.port}"
    script = (
        "import requests; from mlflow_gcp.client.auth import GcpAuth; "
        f"r = requests.get('{stack.front.url}/api/2.0/mlflow/experiments/search?max_results=1', "
        "auth=GcpAuth(), timeout=30); print(r.status_code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=clean_env(NO_GCE_CHECK="", GCE_METADATA_HOST=host, GCE_METADATA_IP=host),
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "200"
    assert [s.caller for s in stack.front.log] == [stack.idp.metadata_email]
    assert stack.idp.issued[-1]["aud"] == stack.front.url


def test_the_front_sets_the_run_app_host(stack, plugin):
    # MLflow only allows FRONT_HOST (not 127.0.0.1:front-port), so any 200 above proves the
    # rewrite; here the server's own view of the host is checked directly.
    r = requests.get(f"{stack.front.url}/api/2.0/mlflow/experiments/search?max_results=1",
                     auth=GcpAuth(), timeout=30)
    assert r.status_code == 200
    direct = requests.get(
        f"{stack.server.url}/api/2.0/mlflow/experiments/search?max_results=1",
        headers={"Host": f"127.0.0.1:{stack.front.port}"}, timeout=30,
    )
    assert direct.status_code == 403 and "Invalid Host header" in direct.text
    assert FRONT_HOST.endswith(".run.app")


def test_a_retried_upload_sends_the_whole_file_again(stack, plugin, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    src = tmp_path / "upload.bin"
    src.write_bytes(data)
    url = f"{stack.front.url}/api/2.0/mlflow-artifacts/artifacts/{uuid.uuid4().hex}/upload.bin"
    requests.get(f"{stack.front.url}/health", auth=GcpAuth(), timeout=30)  # cache a token
    plugin.clock = lambda: stack.clock() - 7200  # the front will find that token expired
    stack.clock.advance(3700)
    with open(src, "rb") as body:
        resp = requests.put(url, data=body, auth=GcpAuth(), timeout=60)
    assert resp.status_code == 200 and [r.status_code for r in resp.history] == [401]
    back = requests.get(url, auth=GcpAuth(), timeout=60)
    assert back.content == data  # rewound: not a truncated or empty second attempt


def test_a_stream_that_cannot_be_rewound_is_not_retried(stack, plugin):
    url = f"{stack.front.url}/api/2.0/mlflow-artifacts/artifacts/{uuid.uuid4().hex}/stream.bin"
    requests.get(f"{stack.front.url}/health", auth=GcpAuth(), timeout=30)
    plugin.clock = lambda: stack.clock() - 7200
    stack.clock.advance(3700)
    resp = requests.put(url, data=iter([b"x" * 1024] * 4), auth=GcpAuth(), timeout=60)
    assert resp.status_code == 401 and not resp.history
    # Not retried, but the token is renewed for what follows.
    assert plugin.fetches == 2
    assert requests.get(f"{stack.front.url}/health", auth=GcpAuth(), timeout=30).status_code == 200
    assert stack.front.count(401) == 1
