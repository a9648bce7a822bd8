"""`mlflow-gcp local` against a hostile web page and other users of the machine (docs/security.md,
"Local mode" and "Secrets in output"): the server answers loopback Host names only (MLflow's
defaults let `10.attacker.example` in), the GCS emulator refuses forged Hosts and anything a
browser sends on a page's behalf while MLflow's client and google-cloud-storage keep working, and
a database password never shows in any process's argv."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid

import pytest

from mlflow_gcp.server import local as local_mod
from tests.conftest import clean_env, process_tree
from tests.integration.test_local_cli import log_one_run, start_local, stop_and_check_tree
from tests.reliability.routes import raw_request

pytestmark = pytest.mark.slow

PASSWORD = "pw-" + uuid.uuid4().hex
CROSS_SITE = {"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
              "Content-Type": "text/plain"}


@pytest.fixture(scope="module")
def local(tmp_path_factory, new_database):
    from sqlalchemy.engine import make_url

    tmp = tmp_path_factory.mktemp("local-guard")
    # Trust auth ignores the password: it is here to be looked for.
    url = make_url(new_database()).set(drivername="postgresql", password=PASSWORD).render_as_string(hide_password=False)
    port = local_mod.free_port()
    proc, lines = start_local("--port", str(port), "--data-dir", str(tmp / "d"), "--gcs-emulator", cwd=tmp,
                              env={"MLFLOW_GCP_BACKEND_STORE_URI": url})
    emulator = next(line.split(": ", 1)[1] for line in lines if line.startswith("GCS emulator: "))
    yield proc, lines, f"http://127.0.0.1:{port}", port, emulator, tmp
    stop_and_check_tree(proc, signal.SIGINT)


def test_the_server_answers_loopback_names_only(local):
    _proc, _lines, url, port, _emulator, _tmp = local
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    for host in (f"10.attacker.example:{port}", "192.168.attacker.example", f"rebind.attacker.example:{port}",
                 f"172.16.evil.example:{port}"):
        status, body = raw_request(url, "GET", search, {"Host": host})
        assert (status, b"Invalid Host header" in body) == (403, True), host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert raw_request(url, "GET", search, {"Host": host})[0] == 200, host


def test_pages_on_other_localhost_ports_get_nothing(local):
    # MLflow trusts every localhost origin: a page served on any other port (a notebook, a dev
    # server) could read the experiments through its CORS answers, and write.
    _proc, _lines, url, port, _emulator, _tmp = local
    search = "/ajax-api/2.0/mlflow/experiments/search?max_results=1"
    create = "/ajax-api/2.0/mlflow/experiments/create"
    page = {"Origin": "http://localhost:8888", "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}
    status, body = raw_request(url, "GET", search, page)
    assert status == 403 and b"experiments" not in body
    name = f"page-{uuid.uuid4().hex[:8]}"
    assert raw_request(url, "POST", create, page, json.dumps({"name": name}).encode())[0] == 403
    assert raw_request(url, "DELETE", "/ajax-api/2.0/mlflow/experiments/delete", page, b"{}")[0] == 403
    # The UI's own pages, at any of its loopback names, work.
    for own in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        headers = {"Origin": own, "Sec-Fetch-Site": "same-origin"}
        assert raw_request(url, "GET", search, headers)[0] == 200, own
        assert raw_request(url, "POST", create, headers, json.dumps({"name": f"ui-{uuid.uuid4().hex[:8]}"}).encode())[0] == 200
    status, body = raw_request(url, "GET", f"/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name={name}")
    assert status == 404  # the page's experiment was never created


def _upload(emulator: str, name: str, headers: dict) -> tuple[int, bytes]:
    path = f"/upload/storage/v1/b/{local_mod.EMULATOR_BUCKET}/o?uploadType=media&name={name}"
    return raw_request(emulator, "POST", path, {"Content-Type": "text/plain", **headers}, b"overwritten by a page")


def _objects(emulator: str) -> list[str]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    gcs = storage.Client(project="local", credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator})
    return [b.name for b in gcs.list_blobs(local_mod.EMULATOR_BUCKET)]


def test_the_emulator_refuses_pages_and_forged_hosts_and_serves_the_clients(local):
    _proc, _lines, url, _port, emulator, tmp = local
    port = emulator.rsplit(":", 1)[1]
    run_id = log_one_run(url, tmp)  # MLflow's client, through the server, into the emulator
    stored = [n for n in _objects(emulator) if n.endswith(f"{run_id}/artifacts/notes.txt")]
    assert len(stored) == 1
    status, body = raw_request(url, "GET", f"/get-artifact?run_id={run_id}&path=notes.txt")
    assert (status, body) == (200, b"hello from local mode")

    refused = {
        "forged host": {"Host": f"rebind.attacker.example:{port}"},
        "private-IP-looking name": {"Host": f"10.attacker.example:{port}"},
        "cross-site page": CROSS_SITE,
        "fetch metadata only": {"Sec-Fetch-Site": "cross-site"},
        "same-site page": {"Origin": "http://localhost:8888", "Sec-Fetch-Site": "same-site"},
    }
    for label, headers in refused.items():
        status, _ = _upload(emulator, stored[0], headers)
        assert status == 403, label
        status, _ = _upload(emulator, f"page-{uuid.uuid4().hex}.txt", headers)
        assert status == 403, label
    assert not [n for n in _objects(emulator) if n.startswith("page-")]
    status, body = raw_request(url, "GET", f"/get-artifact?run_id={run_id}&path=notes.txt")
    assert (status, body) == (200, b"hello from local mode")  # not overwritten
    # The same upload from a program (no browser headers) is an ordinary emulator request.
    assert _upload(emulator, f"plain-{uuid.uuid4().hex}.txt", {})[0] == 200


def test_no_process_shows_the_database_password(local):
    proc, lines, _url, _port, _emulator, _tmp = local
    tree = process_tree(proc.pid)
    assert len(tree) >= 4  # cli, emulator, entrypoint, uvicorn
    for pid in tree:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read()
        except OSError:
            continue
        assert PASSWORD.encode() not in argv, argv.replace(b"\0", b" ")
    assert not any(PASSWORD in line for line in lines)


def test_a_password_on_the_command_line_is_refused_before_anything_starts(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mlflow_gcp", "local", "--port", str(local_mod.free_port()),
         "--backend-store-uri", f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/mlflow"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "MLFLOW_GCP_BACKEND_STORE_URI" in out.stderr and "ps" in out.stderr
    assert PASSWORD not in out.stderr + out.stdout
    assert not (tmp_path / "mlflow-data").exists()


def test_local_gateway_is_opt_in_with_a_private_passphrase(tmp_path):
    port = local_mod.free_port()
    proc, lines = start_local("--port", str(port), "--data-dir", str(tmp_path / "d"), "--gateway", cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        secret_file = tmp_path / "d" / local_mod.GATEWAY_PASSPHRASE_FILE
        passphrase = secret_file.read_text().strip()
        assert (secret_file.stat().st_mode & 0o777) == 0o600
        path = "/gateway/chat/mlflow/invocations"
        status, body = raw_request(url, "POST", path, {"Content-Type": "application/json"}, b'{"messages": []}')
        assert status != 403 and b"AI gateway is off" not in body, (status, body[:200])
        assert raw_request(url, "POST", path, CROSS_SITE, b'{"messages": []}') == (403, b"Cross-origin request blocked")
        for pid in process_tree(proc.pid):
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                assert passphrase.encode() not in fh.read()
        assert not any(passphrase in line for line in lines)
    finally:
        stop_and_check_tree(proc, signal.SIGINT)
    # Without --gateway the routes are gone.
    proc, _lines = start_local("--port", str(port), "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    try:
        status, body = raw_request(url, "POST", "/gateway/chat/mlflow/invocations", {}, b"{}")
        assert status == 404 and b"AI gateway is off" in body
    finally:
        stop_and_check_tree(proc, signal.SIGINT)
