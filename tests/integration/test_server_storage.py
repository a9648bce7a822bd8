"""The real MLflow client against our entrypoint: embedded storage, and PostgreSQL + GCS emulator.

One server per backend for the whole module (start-ups are the expensive part). The PostgreSQL
server runs 2 workers on a budget of 4 connections (pool 1 + 1 overflow each), which is also
what test_server_pool.py measures against pg_stat_activity.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import pytest
import requests

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

pytestmark = pytest.mark.slow

BIG_MB = 50
PASSWORD = "hunter2 p@ss/word"


@pytest.fixture(scope="module")
def embedded_server(start_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("embedded")
    return start_server(
        {
            "DB_URI": f"sqlite:///{data / 'mlflow.db'}",
            "ARTIFACT_ROOT": str(data / "artifacts"),
            "ALLOWED_HOSTS": "*.run.app",
        }
    ), data


@pytest.fixture(scope="module")
def postgres_server(start_server, postgres_url, gcs_emulator):
    from sqlalchemy.engine import make_url

    bucket = gcs_emulator.new_bucket()
    url = make_url(postgres_url)
    # Built from the parts Cloud Run sets; the server's trust auth ignores the password, which is
    # here to prove it is quoted in the URI and never printed.
    server = start_server(
        {
            "DB_USER": url.username,
            "DB_PASSWORD": PASSWORD,
            "DB_NAME": url.database,
            "DB_HOST": url.host,
            "DB_PORT": str(url.port),
            "ARTIFACT_ROOT": f"gs://{bucket}/mlflow",
            "STORAGE_EMULATOR_HOST": gcs_emulator.host,
            "WORKERS": "2",
            "DB_CONNECTIONS": "4",
        }
    )
    return server, bucket


@pytest.fixture(scope="module", params=["embedded", "postgres_gcs"])
def backend(request):
    if request.param == "embedded":
        server, data = request.getfixturevalue("embedded_server")
        return server, {"kind": "embedded", "data": data}
    server, bucket = request.getfixturevalue("postgres_server")
    return server, {"kind": "postgres_gcs", "bucket": bucket}


@pytest.fixture()
def client(backend, monkeypatch):
    server, _ = backend
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH", raising=False)
    # The gcp plugin turns proxied multipart on in its process (tests using it may run earlier in
    # this one); these tests are about the plain client, so start from MLflow's default.
    monkeypatch.delenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", raising=False)
    mlflow.set_tracking_uri(server.url)
    return MlflowClient(server.url)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "model.bin"
    with open(path, "wb") as fh:
        for _ in range(BIG_MB):
            fh.write(os.urandom(1 << 20))
    return path


def test_full_tracking_round_trip(client, backend, big_file, tmp_path):
    server, info = backend
    name = f"exp-{uuid.uuid4().hex[:8]}"
    experiment = mlflow.set_experiment(name)
    report = tmp_path / "report.html"
    report.write_text("<html><body><h1>Accuracy 0.93</h1></body></html>")

    run_ids = []
    for lr in (0.1, 0.01):
        with mlflow.start_run() as run:
            mlflow.log_param("lr", lr)
            mlflow.log_params({"epochs": 3, "optimizer": "adam"})
            for step in range(5):
                mlflow.log_metric("loss", 1.0 / (step + 1) * lr, step=step)
            mlflow.set_tag("team", "vision")
            client.log_batch(
                run.info.run_id,
                metrics=[Metric("acc", 0.5 + i / 10, int(time.time() * 1000), i) for i in range(3)],
                params=[Param("batch_size", "32")],
                tags=[RunTag("stage", "dev")],
            )
            mlflow.log_artifact(str(report), artifact_path="reports")
            run_ids.append(run.info.run_id)
    with mlflow.start_run(run_id=run_ids[0]):
        mlflow.log_artifact(str(big_file), artifact_path="model")

    runs = client.search_runs([experiment.experiment_id], order_by=["params.lr ASC"])
    assert [r.info.run_id for r in runs] == list(reversed(run_ids))
    found = client.search_runs([experiment.experiment_id], "params.lr = '0.1' and tags.team = 'vision'")
    assert [r.info.run_id for r in found] == [run_ids[0]]

    run = client.get_run(run_ids[0])
    assert run.data.params == {"lr": "0.1", "epochs": "3", "optimizer": "adam", "batch_size": "32"}
    assert run.data.tags["team"] == "vision" and run.data.tags["stage"] == "dev"
    history = client.get_metric_history(run_ids[0], "loss")
    assert [(m.step, round(m.value, 6)) for m in sorted(history, key=lambda m: m.step)] == [
        (s, round(0.1 / (s + 1), 6)) for s in range(5)
    ]
    assert [m.value for m in sorted(client.get_metric_history(run_ids[0], "acc"), key=lambda m: m.step)] == [
        0.5, 0.6, 0.7,
    ]

    listed = {a.path for a in client.list_artifacts(run_ids[0])}
    assert listed == {"reports", "model"}
    out = tmp_path / "download"
    html = Path(client.download_artifacts(run_ids[0], "reports/report.html", str(out)))
    assert html.read_text() == report.read_text()
    big = Path(client.download_artifacts(run_ids[0], "model/model.bin", str(out)))
    assert big.stat().st_size == BIG_MB << 20
    assert _sha256(big) == _sha256(big_file)

    # The artifacts really are where ARTIFACT_ROOT says, not on the server's disk.
    if info["kind"] == "embedded":
        stored = list((info["data"] / "artifacts").rglob("model.bin"))
        assert len(stored) == 1 and stored[0].stat().st_size == BIG_MB << 20
    else:
        from google.cloud import storage

        gcs = storage.Client(project="test", client_options={"api_endpoint": os.environ["STORAGE_EMULATOR_HOST"]})
        blobs = [b for b in gcs.list_blobs(info["bucket"], prefix="mlflow/") if b.name.endswith("model.bin")]
        assert len(blobs) == 1 and blobs[0].size == BIG_MB << 20


def test_host_header_checks(embedded_server):
    server, _ = embedded_server
    api = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "mlflow-abc123-ew.a.run.app"):
        assert requests.get(api, headers={"Host": host}, timeout=10).status_code == 200, host
    assert requests.get(api, headers={"Host": "evil.example.com"}, timeout=10).status_code == 403
    # The UI's own POSTs carry its Origin; a foreign origin is refused.
    search = f"{server.url}/ajax-api/2.0/mlflow/experiments/search"
    ui = {"Host": "mlflow-abc123-ew.a.run.app", "Origin": "https://mlflow-abc123-ew.a.run.app"}
    assert requests.post(search, json={"max_results": 1}, headers=ui, timeout=10).status_code == 200
    evil = {**ui, "Origin": "https://evil.example.com"}
    assert requests.post(search, json={"max_results": 1}, headers=evil, timeout=10).status_code == 403
    # /health answers whatever the host: it alone proves nothing about the API.
    assert requests.get(f"{server.url}/health", headers={"Host": "evil.example.com"}, timeout=10).status_code == 200


def test_logs_never_show_the_password(postgres_server):
    server, _ = postgres_server
    out = server.output()
    assert "starting: " in out and "postgresql+psycopg2://postgres:***@127.0.0.1" in out
    assert "hunter2" not in out and "p%40ss" not in out


def test_connections_stay_within_the_budget_under_load(postgres_server, postgres_url):
    """2 workers x 1 shared pool x (1 + 1) = 4 connections, whatever MLflow's 3 engines do."""
    import threading

    from sqlalchemy.engine import make_url

    from mlflow_gcp import budget
    from tests.conftest import pg_connections

    server, _ = postgres_server
    dbname = make_url(postgres_url).database
    limit = 2 * budget.ENGINES_PER_WORKER * budget.pool_for(4, 2).per_engine
    client = MlflowClient(server.url)
    exp = client.create_experiment(f"load-{uuid.uuid4().hex[:8]}")
    errors: list[str] = []
    seen: list[int] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            seen.append(len(pg_connections(dbname)))
            time.sleep(0.05)

    def work(i):
        try:
            run = client.create_run(exp)
            # log_batch holds two connections at once: the case that deadlocks small pools.
            client.log_batch(
                run.info.run_id,
                metrics=[Metric("m", float(s), 0, s) for s in range(20)],
                params=[Param(f"p{i}", "v")],
            )
            client.search_runs([exp], max_results=5)
            client.search_registered_models()  # model-registry engine
            r = requests.post(f"{server.url}/ajax-api/3.0/jobs/search", json={}, timeout=60)  # jobs engine
            if r.status_code != 200:
                errors.append(f"jobs search: {r.status_code}")
        except Exception as err:  # collected: the assertion shows them all
            errors.append(repr(err)[:300])

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    done.set()
    sampler.join()
    assert not errors, errors
    assert max(seen) <= limit, f"{max(seen)} connections, budget {limit}"
    print(f"peak connections under load: {max(seen)} of {limit}")


def test_multipart_without_server_credentials_falls_back_to_one_put(postgres_server, monkeypatch, tmp_path):
    """Local mode against an emulator has no Google credentials to sign part URLs: the server says
    multipart is not supported (MLflow's own answer) and the client sends the file in one PUT."""
    server, bucket = postgres_server
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(1 << 20))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(1 << 20))
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(3 << 20))
    client = MlflowClient(server.url)
    exp = client.create_experiment(f"mpu-fallback-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp)
    client.log_artifact(run.info.run_id, str(path))
    back = Path(client.download_artifacts(run.info.run_id, "weights.bin", str(tmp_path / "back")))
    assert back.read_bytes() == path.read_bytes()
