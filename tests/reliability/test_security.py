"""No one in: every MLflow route refused without a valid token at the front, forged Host headers
refused by the server, artifact path traversal and local-file reads refused, no secret in any log.

The routes are MLflow's own (Flask url_map and FastAPI routers of the installed MLflow), with every
method they accept. Traversal payloads are sent byte for byte (http.client), since requests and
urllib3 would normalise `..` away before it reached the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability import routes as routes_mod
from tests.reliability.scenarios import FRONT_HOST, INVOKER
from tests.reliability.stack import Front, ServerProcess
from tests.support import jwt
from tests.support.idp import new_rsa_key

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

OUTSIDER = "someone@other-project.iam.gserviceaccount.com"
TIMEOUT = 3  # seconds; see the emulator note below
PASSWD_MARKERS = (b"root:x:0:0", b"root:*:0:0", b"/bin/bash", b"nologin")


@pytest.fixture(scope="module")
def routes():
    found = routes_mod.mlflow_routes()
    # MLflow 3.17 serves a few hundred: a short list means the enumeration broke, not MLflow.
    assert len(found) > 300 and ("POST", "/api/2.0/mlflow/runs/log-batch") in found
    return found


def bad_credentials(stack) -> dict[str, dict]:
    now = int(time.time())
    stranger_key = new_rsa_key()
    forged = jwt.encode({"iss": "https://accounts.google.com", "aud": stack.front.url, "email": INVOKER,
                         "exp": now + 3600, "iat": now}, stranger_key, "kid-not-googles")
    return {
        "no token": {},
        "not a JWT": {"Authorization": "Bearer not-a-token"},
        "basic auth": {"Authorization": "Basic dXNlcjpwYXNz"},
        "forged signature": {"Authorization": f"Bearer {forged}"},
        "expired": {"Authorization": f"Bearer {stack.idp.mint(INVOKER, stack.front.url, exp=now - 60)}"},
        "other audience": {"Authorization": f"Bearer {stack.idp.mint(INVOKER, 'https://other.a.run.app')}"},
        "not an invoker": {"Authorization": f"Bearer {stack.idp.mint(OUTSIDER, stack.front.url)}"},
    }


def test_every_route_without_a_valid_token_is_refused_at_the_front(rel_stack, routes):
    stack = rel_stack
    forwarded_before = sum(1 for s in stack.front.log if s.status not in (401, 403))
    statuses: Counter = Counter()
    leaks = []
    for label, headers in bad_credentials(stack).items():
        for method, path in routes:
            status, _ = routes_mod.raw_request(stack.front.url, method, path, headers,
                                               b"{}" if method in ("POST", "PUT", "PATCH") else None)
            statuses[status] += 1
            if status not in (401, 403):
                leaks.append((label, method, path, status))
    assert leaks == [], leaks[:20]
    assert sum(statuses.values()) == 7 * len(routes)
    # None of them reached the server.
    assert sum(1 for s in stack.front.log if s.status not in (401, 403)) == forwarded_before


def test_a_forged_host_header_is_refused_on_every_route_but_health(rel_stack, routes):
    server = rel_stack.server
    wrong = []
    for method, path in routes:
        status, body = routes_mod.raw_request(server.url, method, path, {"Host": "evil.example"},
                                              b"{}" if method in ("POST", "PUT", "PATCH") else None)
        exempt = path in ("/health", "/version")
        if exempt and status != 200 or not exempt and (status != 403 or b"Invalid Host header" not in body):
            wrong.append((method, path, status, body[:80]))
    assert wrong == [], wrong[:20]
    # The run.app host the front sets is the one that passes.
    ok, _ = routes_mod.raw_request(server.url, "GET", "/api/2.0/mlflow/experiments/search?max_results=1",
                                   {"Host": FRONT_HOST})
    assert ok == 200


# ------------------------------------------------------------------ path traversal

TRAVERSALS = [
    "../../../../../../etc/passwd",
    "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "%252e%252e/%252e%252e/%252e%252e/%252e%252e/etc/passwd",
    "..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "..%5c..%5c..%5c..%5c..%5cetc%5cpasswd",
    "..\\..\\..\\..\\..\\etc\\passwd",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "//etc/passwd",
    "file:///etc/passwd",
    "file%3A%2F%2F%2Fetc%2Fpasswd",
    "x/..%00/../../../../etc/passwd",
    "x#/../../../../../etc/passwd",
    "x%23/../../../../../etc/passwd",
    "mlflow-artifacts:/../../../../etc/passwd",
    "1/../../../../../../etc/passwd",
    "....//....//....//etc/passwd",
]


@pytest.fixture(scope="module")
def local_root_server(rel_stack, tmp_path_factory):
    """Our entrypoint with embedded SQLite and a local artifact folder (what `mlflow-gcp local`
    serves by default): the artifact root a traversal could escape on disk."""
    base = Path(tmp_path_factory.mktemp("local-root"))
    server = ServerProcess({"DB_URI": f"sqlite:////{base.as_posix().lstrip('/')}/mlflow.db",
                            "ARTIFACT_ROOT": str(base / "artifacts"), "ALLOWED_HOSTS": FRONT_HOST},
                           base / "logs")
    server.start()
    front = Front(server.url, certs=rel_stack.idp.certs, host=FRONT_HOST,
                  allowed_invokers=[f"serviceAccount:{INVOKER}"]).start()
    yield server, front, base
    front.close()
    server.stop()


def _targets(request, rel_stack):
    if request.param == "gcs":
        return rel_stack.front, None
    server, front, base = request.getfixturevalue("local_root_server")
    return front, base


@pytest.fixture(scope="module", params=["gcs", "local"])
def target(request, rel_stack):
    return _targets(request, rel_stack)


def _auth(stack, front) -> dict:
    return {"Authorization": f"Bearer {stack.idp.mint(INVOKER, front.url)}"}


def _api(front, headers, method, path, payload=None):
    status, body = routes_mod.raw_request(front.url, method, path, headers,
                                          json.dumps(payload).encode() if payload is not None else None)
    return status, body


def _run_with_artifact(stack, front, headers, artifact_location=None):
    body = {"name": f"sec-{uuid.uuid4().hex[:8]}"}
    if artifact_location:
        body["artifact_location"] = artifact_location
    status, out = _api(front, headers, "POST", "/api/2.0/mlflow/experiments/create", body)
    if status != 200:
        return status, None
    exp = json.loads(out)["experiment_id"]
    status, out = _api(front, headers, "POST", "/api/2.0/mlflow/runs/create", {"experiment_id": exp})
    assert status == 200, out
    return status, json.loads(out)["run"]["info"]


def test_artifact_traversal_and_local_file_reads_fail(rel_stack, target):
    front, base = target
    headers = _auth(rel_stack, front)
    _, info = _run_with_artifact(rel_stack, front, headers)
    run_id = info["run_id"]
    # A legitimate artifact, so the endpoints are known to work for a good path.
    good = "ok-" + uuid.uuid4().hex
    prefix = info["artifact_uri"].split("mlflow-artifacts:/", 1)[1]
    status, _ = routes_mod.raw_request(front.url, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{prefix}/{good}.txt",
                                       headers, b"fine")
    assert status == 200
    status, body = routes_mod.raw_request(front.url, "GET", f"/get-artifact?run_id={run_id}&path={good}.txt", headers)
    assert (status, body) == (200, b"fine")

    reg = f"sec-model-{uuid.uuid4().hex[:6]}"
    assert _api(front, headers, "POST", "/api/2.0/mlflow/registered-models/create", {"name": reg})[0] == 200
    status, out = _api(front, headers, "POST", "/api/2.0/mlflow/model-versions/create",
                       {"name": reg, "source": info["artifact_uri"], "run_id": run_id})
    assert status == 200, out

    answers = []
    for p in TRAVERSALS:
        requests_to_try = [
            ("GET", f"/api/2.0/mlflow-artifacts/artifacts/{p}"),
            ("GET", f"/ajax-api/2.0/mlflow-artifacts/artifacts/{prefix}/{p}"),
            ("GET", f"/api/2.0/mlflow-artifacts/artifacts?path={p}"),
            ("GET", f"/get-artifact?run_id={run_id}&path={p}"),
            ("GET", f"/ajax-api/2.0/mlflow/get-artifact?run_id={run_id}&path={p}"),
            ("GET", f"/model-versions/get-artifact?name={reg}&version=1&path={p}"),
            ("GET", f"/ajax-api/2.0/mlflow/model-versions/get-artifact?name={reg}&version=1&path={p}"),
            ("GET", f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path={p}"),
        ]
        for method, path in requests_to_try:
            try:
                status, body = routes_mod.raw_request(front.url, method, path, headers, timeout=TIMEOUT)
            except TimeoutError:
                # A GCS object name with `..\` makes the emulator drop the connection, and the
                # server's storage client retries it for up to 2 minutes (real GCS says 404: in
                # a flat namespace it is just a name). No answer is no content.
                status, body = 0, b""
            answers.append((method, path, status, body))
    leaked = [(m, p, s) for m, p, s, b in answers if any(k in b for k in PASSWD_MARKERS)]
    assert leaked == []
    # Reads of a file outside the root never succeed (a listing may answer 200 with nothing in it).
    served = [(m, p, s) for m, p, s, b in answers if s == 200 and "?path=" not in p and "artifacts/list" not in p]
    assert served == [], served


def test_artifact_uploads_never_land_outside_the_root(rel_stack, target):
    front, base = target
    headers = _auth(rel_stack, front)
    marker = "pwned-" + uuid.uuid4().hex
    answers = []
    for p in TRAVERSALS:
        dest = p.replace("etc/passwd", marker).replace("etc%2fpasswd", marker).replace("etc%5cpasswd", marker)
        dest = dest.replace("etc%2Fpasswd", marker).replace("etc\\passwd", marker)
        try:
            status, _ = routes_mod.raw_request(front.url, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{dest}",
                                               headers, b"overwritten", timeout=TIMEOUT)
        except TimeoutError:
            status = 0
        answers.append((dest, status))
    if base is not None:
        root = (base / "artifacts").resolve()
        outside = [str(p) for p in _files_named(marker, [Path("/tmp"), Path("/etc"), base, Path.cwd()])
                   if root not in p.resolve().parents]
        assert outside == []
    else:
        blobs = rel_stack.emulator.blobs(rel_stack.bucket)
        assert all(name.startswith("mlflow/") and ".." not in name.split("/") for name in blobs), sorted(blobs)[:10]
        assert not Path("/" + marker).exists() and not Path("/etc", marker).exists()
    assert not any(Path(d, marker).exists() for d in ("/", "/etc", "/tmp"))


def _files_named(name: str, roots: list[Path]) -> list[Path]:
    found = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root, onerror=lambda e: None):
            if name in files:
                found.append(Path(dirpath, name))
    return found


@pytest.mark.parametrize("location", [
    "file:///etc", "/etc", "file:///etc#", "mlflow-artifacts:/../../../../etc", "file:/etc", "..%2f..%2fetc",
    "gs://some-other-bucket/steal", "file:///proc/self",
])
def test_experiments_cannot_point_the_server_at_local_files(rel_stack, location):
    front = rel_stack.front
    headers = _auth(rel_stack, front)
    status, info = _run_with_artifact(rel_stack, front, headers, artifact_location=location)
    if info is None:
        assert status in (400, 403), status  # refused at creation: the best outcome
        return
    run_id = info["run_id"]
    for path in ("passwd", "../passwd", "environ", "self/environ", "steal"):
        for url in (f"/get-artifact?run_id={run_id}&path={path}",
                    f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path={path}"):
            status, body = routes_mod.raw_request(front.url, "GET", url, headers)
            assert not any(k in body for k in PASSWD_MARKERS), (location, url)
            assert rel_stack.pg.password.encode() not in body, (location, url)


# ------------------------------------------------------------------ secrets in output


def test_the_database_password_and_tokens_never_appear_in_any_output(rel_stack, tmp_path):
    stack = rel_stack
    # Commands an operator or the migration job runs with the server's environment, including
    # failing ones (an unreachable database prints the URI it tried).
    env = {**os.environ, **stack.server_env(1, 1), "LOG_FORMAT": "text"}
    env.pop("MLFLOW_TRACKING_URI", None)
    outputs = []
    for args, extra in (
        (["check"], {}),
        (["migrate"], {}),
        (["check"], {"DB_PORT": "1", "DB_WAIT_SECONDS": "1"}),
        (["serve"], {"DB_PORT": "1", "DB_WAIT_SECONDS": "1"}),
        (["check"], {"DB_URI": f"postgresql://mlflow:{stack.pg.password}@127.0.0.1:1/mlflow", "DB_WAIT_SECONDS": "1"}),
        (["serve"], {"DB_URI": f"postgresql://mlflow:{stack.pg.password}@127.0.0.1:1/mlflow", "WORKERS": "zero"}),
    ):
        proc = subprocess.run([sys.executable, "-m", "mlflow_gcp.server", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=120)
        outputs.append((args, extra.keys(), proc.returncode, proc.stdout + proc.stderr))
    assert [o[2] for o in outputs] == [0, 0, 3, 3, 3, 2], [(o[0], o[2], o[3][-300:]) for o in outputs]
    client = subprocess.run(
        [sys.executable, "-m", "mlflow_gcp", "env"],
        env={**os.environ, "MLFLOW_GCP_CREDENTIALS_FILE": str(stack.key_file), "NO_GCE_CHECK": "true"},
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    outputs.append((["env"], (), client.returncode, client.stdout + client.stderr))

    logs = [stack.server_output(), *(o[3] for o in outputs)]
    assert stack.tokens, "the load minted tokens"
    secrets = {"db password": stack.pg.password}
    for i, token in enumerate(stack.tokens):
        secrets[f"token {i}"] = token
        secrets[f"token {i} signature"] = token.rsplit(".", 1)[1]
    found = [(name, i) for i, text in enumerate(logs) for name, value in secrets.items() if value in text]
    assert found == []
    # The server's log does say which database it uses, with the password masked.
    assert f"postgresql+psycopg2://mlflow:***@127.0.0.1:{stack.pg.port}/mlflow" in stack.server_output()
