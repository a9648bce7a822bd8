"""Google identities all the way into MLflow: our server (PostgreSQL, permissions on) behind the
Cloud Run front stand-in, the local identity provider issuing tokens for an admin, alice, bob and
a service account, and the real MLflow client with our plugin."""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest
import requests
from click.testing import CliRunner

from mlflow_gcp.cli.main import cli
from mlflow_gcp.client import tokens

from tests.conftest import pg_admin
from tests.support.cloudrun_front import CloudRunFront
from tests.support.idp import LocalIdentityProvider

pytestmark = pytest.mark.slow

HOST = "mlflow-tracking-perm4x2k9a-ew.a.run.app"
AUDIENCE = f"https://{HOST}"
ADMIN, ALICE, BOB = "admin@acme.com", "alice@acme.com", "bob@acme.com"
JOB = "nightly@acme-prod.iam.gserviceaccount.com"
DENIED = "Permission denied"


class Deployment:
    def __init__(self, idp, server, front, keys):
        self.idp, self.server, self.front, self.keys = idp, server, front, keys

    def audit(self) -> list[dict]:
        return [json.loads(line) for line in self.server.output().splitlines()
                if line.startswith("{") and '"caller"' in line]


@pytest.fixture(scope="module")
def deployment(new_database, start_server, tmp_path_factory):
    idp = LocalIdentityProvider().start()
    db_uri = new_database("mlflow_perm")
    # The front first, so that its own URL is an audience too (a client that mints tokens for
    # the URL it calls, as `up`'s health check does); its upstream is known once the server is.
    front = CloudRunFront("http://127.0.0.1:9", audience=AUDIENCE, certs=idp.certs, host=HOST).start()
    front.extra_audiences.add(front.url)
    server = start_server({
        "DB_URI": db_uri,
        "ARTIFACT_ROOT": str(tmp_path_factory.mktemp("artifacts")),
        "ALLOWED_HOSTS": HOST,
        "IDENTITY_AUDIENCES": f"{AUDIENCE},{front.url}",
        "IDENTITY_CERTS_URL": idp.certs_url,
        "MLFLOW_GCP_PERMISSIONS": "1",
        "MLFLOW_GCP_ADMINS": ADMIN,
        "LOG_FORMAT": "json",
    })
    front.upstream = ("127.0.0.1", server.port)
    keys_dir = tmp_path_factory.mktemp("keys")
    keys = {who: idp.write_key_file(keys_dir / f"{who.split('@')[0]}.json", who)
            for who in (ADMIN, ALICE, BOB, JOB)}
    yield Deployment(idp, server, front, keys)
    front.close()
    idp.close()
    server.stop()
    # the permission store's database, made by the server
    pg_admin(f'DROP DATABASE IF EXISTS "{db_uri.rsplit("/", 1)[1]}_permissions" WITH (FORCE)')


@pytest.fixture
def as_user(deployment, monkeypatch):
    """Switch this process's MLflow client (MLFLOW_TRACKING_AUTH=gcp) to another identity."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "gcp")
    monkeypatch.setenv("MLFLOW_GCP_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)

    def switch(email: str) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_GCP_CREDENTIALS_FILE", str(deployment.keys[email]))
        monkeypatch.setattr(tokens, "_default_cache", tokens.TokenCache())
        return MlflowClient(tracking_uri=deployment.front.url)

    return switch


@contextlib.contextmanager
def refused():
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as info:
        yield info
    assert "403" in str(info.value) and DENIED in str(info.value), str(info.value)


def access(*args: str) -> str:
    result = CliRunner().invoke(cli, ["access", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_experiments_runs_and_models_follow_mlflow_permissions(deployment, as_user):
    from mlflow.entities import Metric

    name = f"alice-exp-{uuid.uuid4().hex[:6]}"
    alice = as_user(ALICE)
    exp_id = alice.create_experiment(name)
    # MLflow's fluent API tags runs with the laptop's OS user; the server puts the caller there.
    run = alice.create_run(exp_id, tags={"mlflow.user": "laptop-os-user"})
    alice.log_batch(run.info.run_id, metrics=[Metric("loss", 0.5, 1, 0)])  # the fast path
    alice.log_param(run.info.run_id, "lr", "0.1")
    got = alice.get_run(run.info.run_id)
    assert got.info.user_id == ALICE
    assert got.data.tags["mlflow.user"] == ALICE
    assert got.data.metrics == {"loss": 0.5}

    bob = as_user(BOB)
    assert bob.get_experiment(exp_id).name == name  # READ: the deployment's default
    assert [r.info.run_id for r in bob.search_runs([exp_id])] == [run.info.run_id]
    with refused():
        bob.log_batch(run.info.run_id, metrics=[Metric("loss", 9.0, 2, 1)])  # fast path too
    with refused():
        bob.log_metric(run.info.run_id, "loss", 9.0, step=2)
    with refused():
        bob.create_run(exp_id)
    with refused():
        bob.delete_experiment(exp_id)
    assert alice.get_run(run.info.run_id).data.metrics == {"loss": 0.5}

    # A forged identity header beside bob's valid token changes nothing.
    forged = requests.post(
        f"{deployment.front.url}/api/2.0/mlflow/experiments/delete", json={"experiment_id": exp_id},
        headers={"Authorization": f"Bearer {deployment.idp.mint(BOB, AUDIENCE)}",
                 "X-Serverless-Authorization": f"Bearer {deployment.idp.mint(BOB, AUDIENCE)}",
                 "X-Mlflow-Gcp-Dev-User": ADMIN, "X-Goog-Authenticated-User-Email": ADMIN},
        timeout=30)
    assert forged.status_code == 403 and DENIED in forged.text

    # The admin grants bob EDIT with the CLI (MLflow's permission API), and bob can log.
    as_user(ADMIN)
    front = ["--url", deployment.front.url]
    assert access("grant", f"user:{BOB}", "--experiment", name, "--permission", "EDIT", *front) \
        == f"grant EDIT on experiment {name} to user:{BOB}\n"
    listed = json.loads(access("list", "--experiment", name, "--json", *front))
    assert {"member": f"user:{ALICE}", "permission": "MANAGE", "source": "grant"} in listed
    assert {"member": f"user:{BOB}", "permission": "EDIT", "source": "grant"} in listed
    assert {"member": f"user:{ADMIN}", "permission": "MANAGE", "source": "admin"} in listed
    bob = as_user(BOB)
    bob.log_batch(run.info.run_id, metrics=[Metric("loss", 0.25, 3, 2)])
    bob_run = bob.create_run(exp_id)
    assert bob.get_run(bob_run.info.run_id).info.user_id == BOB
    with refused():
        bob.delete_experiment(exp_id)  # EDIT is not MANAGE
    as_user(ADMIN)
    access("revoke", f"user:{BOB}", "--experiment", name, *front)
    bob = as_user(BOB)
    with refused():
        bob.log_metric(run.info.run_id, "loss", 1.0, step=4)

    # Bob's own experiment is his to manage; alice may only read it.
    own = bob.create_experiment(f"bob-exp-{uuid.uuid4().hex[:6]}")
    with refused():
        as_user(ALICE).delete_experiment(own)
    as_user(BOB).delete_experiment(own)

    # Registered models: the creator manages, others read; versions name their creator.
    model = f"alice-model-{uuid.uuid4().hex[:6]}"
    alice = as_user(ALICE)
    alice.create_registered_model(model)
    version = alice.create_model_version(model, f"runs:/{run.info.run_id}/model", run.info.run_id)
    assert alice.get_model_version(model, version.version).tags["mlflow.user"] == ALICE
    bob = as_user(BOB)
    assert bob.get_registered_model(model).name == model
    with refused():
        bob.update_registered_model(model, description="bob was here")
    with refused():
        bob.delete_registered_model(model)
    as_user(ADMIN)
    access("grant", f"user:{BOB}", "--model", model, "--permission", "EDIT", *front)
    as_user(BOB).update_registered_model(model, description="bob may")

    # The admin can do everything.
    admin = as_user(ADMIN)
    admin.delete_registered_model(model)
    admin.delete_experiment(exp_id)

    # The audit log names the caller of every write, refused ones included.
    lines = deployment.audit()
    assert any(line["caller"] == BOB and line["path"].endswith("/experiments/delete")
               and line["status"] == 403 and line["target"] == {"experiment_id": exp_id} for line in lines)
    assert any(line["caller"] == ADMIN and line["path"].endswith("/experiments/delete")
               and line["status"] == 200 and line["target"] == {"experiment_id": exp_id} for line in lines)
    assert any(line["caller"] == ALICE and line["path"].endswith("/runs/log-batch") for line in lines)


def test_a_service_account_job_is_its_own_mlflow_user(deployment, as_user):
    job = as_user(JOB)
    exp_id = job.create_experiment(f"nightly-{uuid.uuid4().hex[:6]}")
    run = job.create_run(exp_id)
    job.log_metric(run.info.run_id, "auc", 0.9)
    assert job.get_run(run.info.run_id).info.user_id == JOB
    # mlflow.set_tags() goes through log-batch: the user tag still names the caller.
    from mlflow.entities import Metric, RunTag

    job.log_batch(run.info.run_id, metrics=[Metric("auc", 0.95, 1, 1)],
                  tags=[RunTag("mlflow.user", ALICE), RunTag("team", "ml")])
    tags = job.get_run(run.info.run_id).data.tags
    assert tags["mlflow.user"] == JOB and tags["team"] == "ml"
    job.set_tag(run.info.run_id, "mlflow.user", BOB)
    assert job.get_run(run.info.run_id).data.tags["mlflow.user"] == JOB
    with refused():
        as_user(ALICE).log_metric(run.info.run_id, "auc", 0.1)


def test_without_a_valid_token_the_server_itself_refuses(deployment):
    """Straight to the server (as from inside the VPC, or a misconfigured front): a forged
    identity header or a signature-stripped token is not an identity."""
    url = f"{deployment.server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    headers = {"Host": HOST}
    assert requests.get(url, headers={**headers, "X-Mlflow-Gcp-Dev-User": ADMIN}, timeout=30).status_code == 401
    token = deployment.idp.mint(ADMIN, AUDIENCE)
    stripped = token.rsplit(".", 1)[0] + "."
    got = requests.get(url, headers={**headers, "Authorization": f"Bearer {stripped}"}, timeout=30)
    assert got.status_code == 401 and "no signature" in got.text
    ok = requests.get(url, headers={**headers, "Authorization": f"Bearer {token}"}, timeout=30)
    assert ok.status_code == 200
    assert requests.get(f"{deployment.server.url}/health", timeout=30).status_code == 200


def test_turning_permissions_on_keeps_experiments_with_their_users(new_database, start_server, tmp_path, monkeypatch):
    """A deployment used without permissions (identities verified, so runs name their users)
    turns them on: the user of an experiment's first run manages it, its other users edit it,
    everyone reads it (the default permission)."""
    from mlflow.tracking import MlflowClient

    idp = LocalIdentityProvider().start()
    db_uri = new_database("mlflow_perm_on")
    env = {"DB_URI": db_uri, "ARTIFACT_ROOT": str(tmp_path / "artifacts"), "ALLOWED_HOSTS": HOST,
           "IDENTITY_AUDIENCES": AUDIENCE, "IDENTITY_CERTS_URL": idp.certs_url}
    keys = {who: idp.write_key_file(tmp_path / f"{who.split('@')[0]}.json", who) for who in (ALICE, BOB)}
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "gcp")
    monkeypatch.setenv("MLFLOW_GCP_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    def client(front, email):
        monkeypatch.setenv("MLFLOW_GCP_CREDENTIALS_FILE", str(keys[email]))
        monkeypatch.setattr(tokens, "_default_cache", tokens.TokenCache())
        return MlflowClient(tracking_uri=front.url)

    fronts = []
    try:
        before = start_server(env)
        fronts.append(CloudRunFront(before.url, audience=AUDIENCE, certs=idp.certs, host=HOST).start())
        alice = client(fronts[-1], ALICE)
        shared = alice.create_experiment(f"shared-{uuid.uuid4().hex[:6]}")
        first = alice.create_run(shared).info.run_id
        bob = client(fronts[-1], BOB)
        bob.create_run(shared)  # without permissions anyone may log anywhere
        own = bob.create_experiment(f"bobs-{uuid.uuid4().hex[:6]}")
        bob_run = bob.create_run(own).info.run_id
        before.stop()

        after = start_server({**env, "MLFLOW_GCP_PERMISSIONS": "1", "MLFLOW_GCP_ADMINS": ADMIN})
        # alice MANAGE and bob EDIT on the shared experiment, bob MANAGE on his own
        assert "3 grant(s) for existing experiments' users" in after.output()
        fronts.append(CloudRunFront(after.url, audience=AUDIENCE, certs=idp.certs, host=HOST).start())
        alice = client(fronts[-1], ALICE)
        alice.log_metric(first, "loss", 0.1)
        with refused():
            alice.log_metric(bob_run, "loss", 0.1)  # bob's experiment: alice reads only
        assert alice.get_run(bob_run).info.user_id == BOB
        bob = client(fronts[-1], BOB)
        bob.log_metric(bob_run, "loss", 0.2)
        bob.log_metric(first, "loss", 0.3)  # he logged runs in the shared one: EDIT
        with refused():
            bob.delete_experiment(shared)  # but alice's first run makes her its manager
        alice = client(fronts[-1], ALICE)
        alice.delete_experiment(shared)
    finally:
        for front in fronts:
            front.close()
        idp.close()
        pg_admin(f'DROP DATABASE IF EXISTS "{db_uri.rsplit("/", 1)[1]}_permissions" WITH (FORCE)')


def test_the_ui_shows_each_user_what_they_may_see(deployment, as_user, tmp_path):
    """`mlflow-gcp ui` for alice and for bob, in headless Chromium: an experiment alice keeps
    from bob (an explicit DENY) is in her list and not in his."""
    from tests.integration.test_ui_proxy import ARTIFACTS_DIR, _start_ui, _stop_ui
    from tests.support.chromium import Browser, find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (`apt-get install chromium`; .ci/run does it)")
    tag = uuid.uuid4().hex[:6]
    hidden, shared = f"alice-private-{tag}", f"alice-shared-{tag}"
    alice = as_user(ALICE)
    hidden_id = alice.create_experiment(hidden)
    alice.create_experiment(shared)
    as_user(ADMIN)
    access("grant", f"user:{BOB}", "--experiment", hidden, "--permission", "DENY",
           "--url", deployment.front.url)

    class _Front:  # what _start_ui needs of a stack
        front = deployment.front

    pages = {}
    for who in (ALICE, BOB):
        ui, _url, login_url = _start_ui(_Front, MLFLOW_GCP_CREDENTIALS_FILE=str(deployment.keys[who]),
                                        MLFLOW_GCP_AUDIENCE=AUDIENCE)
        browser = None
        try:
            browser = Browser(chromium, tmp_path / f"profile-{who.split('@')[0]}")
            browser.navigate(f"{login_url}#/experiments")
            try:
                pages[who] = browser.wait_for_text(shared)
            finally:
                browser.screenshot(ARTIFACTS_DIR / f"ui-permissions-{who.split('@')[0]}.png")
            if who == BOB:  # the API behind the page refuses it too
                with refused():
                    as_user(BOB).get_experiment(hidden_id)
        finally:
            if browser is not None:
                browser.close()
            _stop_ui(ui)
    assert hidden in pages[ALICE]
    assert hidden not in pages[BOB]


def test_ups_health_check_passes_a_server_that_verifies_identities(deployment, monkeypatch):
    """`up` and `upgrade` end with this check: it must send the token as the plugin does, or the
    server (which gets a signature-stripped copy in the header Cloud Run checked) refuses it."""
    from mlflow_gcp.ops import health

    monkeypatch.setenv("MLFLOW_GCP_CREDENTIALS_FILE", str(deployment.keys[ALICE]))
    monkeypatch.delenv("MLFLOW_GCP_AUDIENCE", raising=False)
    result = health.check(deployment.front.url, emulated=False)
    assert result.ok is True, result.message
