"""upgrade (and its automatic rollback) and rotate-password, against the fake of Google's APIs;
the smoke test goes through a Cloud Run front stand-in to a real MLflow server."""

from __future__ import annotations

import logging

import pytest

from pathlib import Path

from mlflow_gcp import config, image_source
from mlflow_gcp.gcp import runrevisions
from mlflow_gcp.ops import history

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server  # noqa: F401
from tests.integration.ops_support import PROJECT, SERVICE, deployed, run_cli, workdir, writes  # noqa: F401
from tests.support.cloudrun_front import CloudRunFront

# Deployed with the previous patch release, upgraded to the one the test's real MLflow server runs,
# so the smoke test's /version check can pass.
OLD = "3.17.1"
NEW = config.MLFLOW_VERSION
DEPLOY_SETTINGS = [f"service.mlflow_version={OLD}"]
JOB = f"projects/{PROJECT}/locations/europe-west9/jobs/mlflow-tracking-migrate"


def _image(fake) -> str:
    return fake.state("run")[SERVICE]["template"]["containers"][0]["image"]


def _job_image(fake) -> str:
    return fake.api("run").jobs[JOB]["template"]["template"]["containers"][0]["image"]


def _ready_revision(fake) -> str:
    return fake.state("run")[SERVICE]["latestReadyRevision"].rsplit("/", 1)[-1]


def test_upgrade_backs_up_builds_migrates_then_rolls_out(deployed, fake_gcp, capsys):
    before = _ready_revision(fake_gcp)
    code, out, err = run_cli(capsys, "upgrade", "--mlflow-version", NEW, "--yes")
    assert code == 0, err
    ids = writes(fake_gcp)
    order = [ids.index(m) for m in ("sql.backupRuns.insert", "cloudbuild.projects.builds.create",
                                    "run.projects.locations.jobs.patch", "run.projects.locations.jobs.run",
                                    "run.projects.locations.services.patch")]
    assert order == sorted(order)
    assert f"/mlflow-gcp:{NEW}-{image_source.digest()}@sha256:" in _image(fake_gcp)
    assert _job_image(fake_gcp) == _image(fake_gcp)
    after = _ready_revision(fake_gcp)
    assert after != before and f"revision {after} serves all traffic" in out
    # Emulated without --url: the smoke test cannot run, and that is said, not counted as a pass.
    assert f"serves all traffic (previous {before}, backup " in out and "its health was NOT verified." in out
    assert "health check skipped: MLFLOW_GCP_API_ROOT points at an emulator" in out
    assert err.startswith(f"Warning: the health of revision {after} was NOT verified (health check skipped: ")
    assert "`mlflow-gcp doctor`" in err and "--url URL" in err
    assert config.load("mlflow-gcp.toml", env={}).service.mlflow_version == NEW
    last = history.read(Path("mlflow-gcp.toml"))[-1]
    assert (last["command"], last["outcome"], last["revision"]) == ("upgrade", "upgraded, not verified", after)
    assert last["health"].startswith("health check skipped")
    fake_gcp.clear_log()
    assert run_cli(capsys, "up", "--yes")[1].startswith("No changes.")
    assert run_cli(capsys, "upgrade", "--mlflow-version", NEW, "--yes")[1].strip() == f"Already on MLflow {NEW}."


def test_a_failed_rollout_sends_traffic_back(deployed, fake_gcp, capsys):
    before, old_image = _ready_revision(fake_gcp), _image(fake_gcp)
    fake_gcp.fail_next_operation(api="run", target_regex=r"services/mlflow-tracking ", message="container failed to start")
    code, out, err = run_cli(capsys, "upgrade", "--mlflow-version", NEW, "--yes")
    assert code == 1
    assert f"upgrade to MLflow {NEW} rolled back" in err and "container failed to start" in err
    assert f"all traffic is on {before}" in err and "mlflow-gcp backup restore" in err
    svc = fake_gcp.state("run")[SERVICE]
    assert svc["traffic"] == [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": before, "percent": 100}]
    assert _job_image(fake_gcp) == old_image
    assert config.load("mlflow-gcp.toml", env={}).service.mlflow_version == OLD
    assert history.read(Path("mlflow-gcp.toml"))[-1]["outcome"] == "rolled back"
    # While traffic is pinned, changes that need a new revision are refused with the way out.
    code, _, err = run_cli(capsys, "scale", "--max-instances", "5")
    assert code == 1 and "traffic is pinned" in err and "mlflow-gcp up" in err


def test_a_bad_version_is_refused_before_any_call(deployed, fake_gcp, capsys):
    code, _, err = run_cli(capsys, "upgrade", "--mlflow-version", "2.9.2", "--yes")
    assert code == 2 and "known server vulnerabilities" in err
    # A release of another series: our server's use of MLflow internals was never checked against it.
    code, _, err = run_cli(capsys, "upgrade", "--mlflow-version", "3.18.0", "--yes")
    assert code == 2 and "runs MLflow 3.17.x only" in err and "install the mlflow-gcp release" in err
    assert fake_gcp.mutating_requests() == []


def test_the_build_gets_the_version_from_the_uploaded_dockerfile(deployed, fake_gcp, capsys):
    # The fake's Cloud Build unpacks the tarball the tool uploaded and refuses a --build-arg its
    # Dockerfile does not declare; the build body must pass the version the tag names.
    code, _, err = run_cli(capsys, "upgrade", "--mlflow-version", NEW, "--yes")
    assert code == 0, err
    (build,) = [r.body for r in fake_gcp.requests if r.method_id == "cloudbuild.projects.builds.create"]
    args = build["steps"][0]["args"]
    assert args[args.index("--build-arg") + 1] == f"MLFLOW_VERSION={NEW}"
    assert f"mlflow-gcp:{NEW}-" in args[args.index("-t") + 1]
    assert [b["status"] for b in fake_gcp.state("cloudbuild").values()] == ["SUCCESS", "SUCCESS"]  # up's, then ours


@pytest.fixture
def wired(deployed, fake_gcp, plugin, stack, monkeypatch):
    """The deployed fake plus the client stack (ID tokens from a local IdP)."""
    monkeypatch.setenv("MLFLOW_GCP_API_ROOT", fake_gcp.url)  # the plugin fixture clears MLFLOW_GCP_*
    return stack


def test_an_unhealthy_new_revision_is_rolled_back(wired, fake_gcp, capsys):
    # A front whose host MLflow does not allow: /health answers 200 but every API call 403.
    bad = CloudRunFront(wired.server.url, certs=wired.idp.certs, host="not-allowed.a.run.app",
                        clock=wired.clock).start()
    try:
        before = _ready_revision(fake_gcp)
        code, out, err = run_cli(capsys, "upgrade", "--mlflow-version", NEW, "--yes", "--url", bad.url)
    finally:
        bad.close()
    assert code == 1
    assert "the MLflow API answered 403" in err and f"all traffic is on {before}" in err
    assert fake_gcp.state("run")[SERVICE]["traffic"][0]["revision"] == before


def test_a_healthy_new_revision_keeps_the_traffic(wired, fake_gcp, capsys):
    code, out, err = run_cli(capsys, "upgrade", "--mlflow-version", NEW, "--yes", "--url", wired.front.url)
    assert code == 0, err
    after = _ready_revision(fake_gcp)
    assert f"revision {after} serves all traffic" in out and "NOT verified" not in out + err
    healthy = f"healthy: /health and the MLflow API answer 200, /version is {NEW}"
    assert healthy in out
    assert "Warning" not in err
    assert wired.front.count(200) >= 3
    last = history.read(Path("mlflow-gcp.toml"))[-1]
    assert (last["outcome"], last["revision"], last["health"]) == ("upgraded", after, healthy)


def test_a_revision_serving_another_mlflow_is_rolled_back(wired, fake_gcp, capsys):
    # The bug this guards: an image tagged 3.17.3 that still ran 3.17.2 passed the smoke test and
    # 3.17.3 went into the config. The real server behind the front runs 3.17.2 whatever the tag says.
    before = _ready_revision(fake_gcp)
    code, out, err = run_cli(capsys, "upgrade", "--mlflow-version", "3.17.3", "--yes", "--url", wired.front.url)
    assert code == 1
    assert f"/version says MLflow '{NEW}', not 3.17.3" in err and f"all traffic is on {before}" in err
    assert fake_gcp.state("run")[SERVICE]["traffic"][0]["revision"] == before
    assert config.load("mlflow-gcp.toml", env={}).service.mlflow_version == OLD
    assert history.read(Path("mlflow-gcp.toml"))[-1]["outcome"] == "rolled back"


def test_without_an_id_token_the_new_revision_is_not_verified(wired, fake_gcp, capsys, monkeypatch, tmp_path):
    # A reachable server, but no credentials to mint an ID token for it.
    monkeypatch.setenv("MLFLOW_GCP_CREDENTIALS_FILE", str(tmp_path / "no-such-key.json"))
    before = _ready_revision(fake_gcp)
    code, out, err = run_cli(capsys, "upgrade", "--mlflow-version", NEW, "--yes", "--url", wired.front.url)
    assert code == 0, err  # done: no exit code means "unverified", so it is said instead
    after = _ready_revision(fake_gcp)
    assert after != before and runrevisions.serving_revisions(fake_gcp.state("run")[SERVICE]) == [after]
    assert "its health was NOT verified." in out
    assert f"health check skipped: no ID token could be minted for {wired.front.url}" in out
    assert err.startswith(f"Warning: the health of revision {after} was NOT verified (health check skipped: no ID token")
    assert "`mlflow-gcp env` lists the token sources" in err
    assert wired.front.count(200) == 0  # nothing reached the server to call it healthy
    assert history.read(Path("mlflow-gcp.toml"))[-1]["outcome"] == "upgraded, not verified"


def test_rotate_password_never_shows_it(deployed, fake_gcp, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = fake_gcp.api("secretmanager")
    old = secrets.payload_of(PROJECT, "mlflow-tracking-db-password").decode()
    before = _ready_revision(fake_gcp)
    code, out, err = run_cli(capsys, "--debug", "rotate-password", "--yes")
    assert code == 0, err
    new = secrets.payload_of(PROJECT, "mlflow-tracking-db-password").decode()
    assert new != old
    assert fake_gcp.api("sqladmin").password_of(PROJECT, "mlflow-db", "mlflow") == new
    versions = next(v for k, v in secrets.versions_of.items() if k.endswith("/mlflow-tracking-db-password"))
    assert [v["state"] for v in versions] == ["DISABLED", "ENABLED"]
    assert _ready_revision(fake_gcp) != before
    ids = writes(fake_gcp)
    assert ids.index("sql.users.update") < ids.index("run.projects.locations.services.patch") < ids.index(
        "secretmanager.projects.secrets.versions.disable")
    text = out + err + caplog.text + "".join(str(r.body) for r in fake_gcp.requests
                                              if r.method_id.startswith(("run.", "cloudscheduler.", "logging.")))
    for password in (new, old):
        assert password not in text
    assert "Password rotated: secret version 2" in out and "disabled version(s) 1" in out
    # The next `up` agrees: the user's password came from the secret, the service reads latest.
    fake_gcp.clear_log()
    assert run_cli(capsys, "up", "--yes")[1].startswith("No changes.")


def test_a_failed_migration_rolls_nothing_out(deployed, fake_gcp, capsys):
    before, old_image = _ready_revision(fake_gcp), _image(fake_gcp)
    fake_gcp.fail_next_operation(api="run", target_regex=r"jobs/.* Execution", message="relation does not exist")
    code, _, err = run_cli(capsys, "upgrade", "--mlflow-version", NEW, "--yes")
    assert code == 1
    assert f"the schema migration to MLflow {NEW} failed, nothing was rolled out" in err
    assert "mlflow-gcp backup restore" in err
    assert "run.projects.locations.services.patch" not in writes(fake_gcp)
    assert (_ready_revision(fake_gcp), _image(fake_gcp), _job_image(fake_gcp)) == (before, old_image, old_image)


def test_a_refused_password_change_leaves_the_secret_as_it_was(deployed, fake_gcp, capsys):
    secrets = fake_gcp.api("secretmanager")
    old = secrets.payload_of(PROJECT, "mlflow-tracking-db-password")
    fake_gcp.fail(status=400, method_id="sql.users.update", message="password too weak")
    code, _, err = run_cli(capsys, "rotate-password", "--yes")
    assert code == 1 and "password too weak" in err
    versions = next(v for k, v in secrets.versions_of.items() if k.endswith("/mlflow-tracking-db-password"))
    assert [v["state"] for v in versions] == ["ENABLED", "DESTROYED"]
    assert secrets.payload_of(PROJECT, "mlflow-tracking-db-password") == old  # latest is the old one again
    assert fake_gcp.api("sqladmin").password_of(PROJECT, "mlflow-db", "mlflow") == old.decode()
    assert "run.projects.locations.services.patch" not in writes(fake_gcp)
