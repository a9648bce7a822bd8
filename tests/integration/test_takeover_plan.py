"""Taking over the old scripts' deployment (tests/support/seed_gcp.py) on the fake: `plan` says
every one-way or breaking change before `up` makes it, and `up` backs the database up before it
migrates, keeps or replaces the password as told, and fails like PostgreSQL when the job's user
does not own the tables."""

from __future__ import annotations

import pytest

from mlflow_gcp import config
from mlflow_gcp.cli import main as cli_main
from mlflow_gcp.errors import OperationFailed
from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401
from tests.fakegcp.gcloud import gcloud_available
from tests.integration.ops_support import ctx_for, run_cli, workdir  # noqa: F401
from tests.support.seed_gcp import Seed, seed_deployment

# The seed is made by the real gcloud CLI (tests/support/seed_gcp.py).
pytestmark = pytest.mark.skipif(not gcloud_available(), reason="the gcloud CLI is not installed")

SEED = Seed()
MEMBER = "group:ml@acme.com"


def _config(workdir, user: str = SEED.user) -> config.Config:
    (workdir / "mlflow-gcp.toml").write_text(
        f'project = "{SEED.project}"\nregion = "{SEED.region}"\n'
        f'[access]\nmembers = ["{MEMBER}"]\n[database]\nuser = "{user}"\n')
    return config.load(workdir / "mlflow-gcp.toml", env={})


def _notes(out: str) -> str:
    assert "Read before applying:" in out, out
    return " ".join(out.split("Read before applying:", 1)[1].split())


@pytest.fixture
def seeded(fake_gcp, workdir):
    seed_deployment(fake_gcp, SEED)
    fake_gcp.clear_log()
    return fake_gcp


def test_plan_explains_every_breaking_change_of_the_takeover(seeded, workdir, capsys):
    _config(workdir)
    code, out, _ = run_cli(capsys, "plan")
    assert code == 0
    notes = _notes(out)
    # 1. the one-way migration, with its backup and the way back
    assert ("may upgrade the existing schema of mlflow-db/mlflow from an MLflow of unknown version "
            f"(image {SEED.image}) to MLflow 3.17.2: one-way") in notes
    assert "takes an on-demand backup first" in notes and "mlflow-gcp backup restore BACKUP_ID" in notes
    assert "downtime" in notes
    # 3. the password that changes, and what else uses it
    assert f"the existing user '{SEED.user}' gets a NEW generated password" in notes
    assert f"the running Cloud Run service {SEED.service} (its DB_URI)" in notes
    assert "the old scripts' .env (USER_PASSWORD)" in notes
    assert f"gcloud sql connect {SEED.instance} --user={SEED.user}" in notes
    assert "rerun with --import-db-password: it is read from the service's DB_URI" in notes
    # 4. public to private, with the client instructions for MLflow 3 and 2.x
    assert "allUsers lose roles/run.invoker: the server stops being public" in notes
    assert f"Who may call it: {MEMBER}" in notes
    assert "export MLFLOW_TRACKING_AUTH=gcp" in notes and "pip install ./client-dist" in notes
    # 7. why the 90-day Delete rule goes
    assert "the Delete rule over the whole bucket (after 90 days) is replaced" in notes
    assert "registered model versions" in notes
    assert SEED.password not in out
    assert seeded.mutating_requests() == []


def test_plan_names_the_owner_when_the_config_would_connect_as_someone_else(seeded, workdir, capsys):
    _config(workdir, user="mlflow")
    code, out, _ = run_cli(capsys, "plan")
    assert code == 0
    notes = _notes(out)
    assert (f"database mlflow already exists and user 'mlflow' does not; the service {SEED.service} "
            f"connects as '{SEED.user}'") in notes
    assert f'set database.user = "{SEED.user}"' in notes


def test_the_fake_job_fails_like_postgresql_for_a_user_who_does_not_own_the_tables(seeded, workdir):
    cfg = _config(workdir, user="mlflow")
    from mlflow_gcp.ops import up as up_ops

    ctx = ctx_for(cfg)
    with pytest.raises(OperationFailed, match="job mlflow-tracking-migrate to finish failed.*container exited"):
        up_ops.apply(ctx, up_ops.make_plan(ctx))
    logged = [e.get("textPayload", "") for e in seeded.api("logging").state.get(SEED.project, [])]
    assert any("permission denied for table alembic_version" in t for t in logged)
    # Backed up before the migration was attempted; the old service still serves the old image.
    assert [b["type"] for b in seeded.api("sqladmin").backups.values()] == ["ON_DEMAND"]
    svc = seeded.state("run")[f"projects/{SEED.project}/locations/{SEED.region}/services/{SEED.service}"]
    assert svc["template"]["containers"][0]["image"] == SEED.image


def test_up_backs_up_before_the_one_way_migration_and_says_how_to_roll_back(seeded, workdir, capsys):
    _config(workdir)
    code, out, err = run_cli(capsys, "up", "--yes")
    assert code == 0, err
    backups = list(seeded.api("sqladmin").backups.values())
    assert [b["type"] for b in backups] == ["ON_DEMAND"]
    assert backups[0]["description"].startswith("before migrating the MLflow schema from an MLflow of unknown")
    methods = [r.method_id for r in seeded.mutating_requests()]
    assert methods.index("sql.backupRuns.insert") < methods.index("run.projects.locations.jobs.run")
    assert f"backup {backups[0]['id']} taken; to roll back: mlflow-gcp backup restore {backups[0]['id']}" in out
    # The job migrated as the owner; the password was replaced (as plan said).
    assert seeded.api("sqladmin").table_owner(SEED.project, SEED.instance, SEED.database) == SEED.user
    assert seeded.api("sqladmin").password_of(SEED.project, SEED.instance, SEED.user) != SEED.password
    # Nothing it did not create was removed.
    iam = seeded.state("iam")
    assert SEED.client_account in iam
    # A second up: nothing to do, and no second backup.
    code, out, _ = run_cli(capsys, "up", "--yes")
    assert "No changes." in out
    assert len(seeded.api("sqladmin").backups) == 1


def test_import_keeps_the_seed_password_without_printing_it(seeded, workdir, capsys):
    _config(workdir)
    code, out, _ = run_cli(capsys, "plan", "--import-db-password")
    assert code == 0
    assert f"import the current password of database user {SEED.user} from service {SEED.service}'s DB_URI" in out
    assert "gets a NEW generated password" not in out
    code, out, err = run_cli(capsys, "up", "--yes", "--import-db-password")
    assert code == 0, err
    assert SEED.password not in out + err
    sql = seeded.api("sqladmin")
    assert sql.password_of(SEED.project, SEED.instance, SEED.user) == SEED.password
    assert seeded.api("secretmanager").payload_of(SEED.project, f"{SEED.service}-db-password").decode() == SEED.password
    assert "sql.users.update" not in [r.method_id for r in seeded.mutating_requests()]
    code, out, _ = run_cli(capsys, "up", "--yes", "--import-db-password")
    assert "No changes." in out


def test_doctor_flags_the_leftovers_that_up_leaves_alone(seeded, workdir, capsys):
    _config(workdir)
    code, _, err = run_cli(capsys, "up", "--yes")
    assert code == 0, err
    # up removed none of it: the key, the old client account, the compute account's roles.
    keys = [k for k in seeded.api("iam").keys if f"/serviceAccounts/{SEED.client_account}/" in k]
    assert len(keys) == 1
    policy = seeded.api("cloudresourcemanager").policy(SEED.project)
    held = {(b["role"], m) for b in policy["bindings"] for m in b["members"]}
    compute = f"serviceAccount:{SEED.compute_account}"
    assert {("roles/storage.objectAdmin", compute), ("roles/cloudsql.client", compute)} <= held

    code, out, _ = run_cli(capsys, "doctor")
    assert code != 0
    key_id = keys[0].rsplit("/", 1)[-1]
    assert f"FAIL  no old key files: {SEED.client_account} has a user-managed key {key_id[:12]}" in out
    assert (f"fix: gcloud iam service-accounts keys delete {key_id} --iam-account={SEED.client_account} "
            f"--project={SEED.project}") in out
    assert f"fix: gcloud iam service-accounts delete {SEED.client_account} --project={SEED.project}" in out
    assert f"WARN  default compute account roles: {SEED.compute_account} holds roles/storage.objectAdmin" in out
    for role in ("roles/storage.objectAdmin", "roles/cloudsql.client"):
        assert (f"fix: gcloud projects remove-iam-policy-binding {SEED.project} --member={compute} "
                f"--role={role}") in out
    assert (f"fix: gcloud projects remove-iam-policy-binding {SEED.project} "
            f"--member=serviceAccount:{SEED.client_account} --role=roles/storage.objectAdmin") in out


def test_relocate_artifacts_runs_as_the_job_and_backs_up_before_applying(seeded, workdir, capsys):
    _config(workdir)
    assert run_cli(capsys, "up", "--yes")[0] == 0
    seen = []

    def container(project, job, env, args):  # the job's container, as the test sees it
        seen.append(args)
        verb = "rewrote 2" if "--apply" in args else "(dry run, nothing changed): 2"
        return None, f"INFO relocate-artifacts {verb} artifact location(s) under {env['ARTIFACT_ROOT']}/"

    seeded.api("run").job_runner = container
    backups = len(seeded.api("sqladmin").backups)
    code, out, err = run_cli(capsys, "relocate-artifacts")
    assert code == 0, err
    assert f"relocate-artifacts (dry run, nothing changed): 2 artifact location(s) under gs://{SEED.bucket}/" in out
    assert len(seeded.api("sqladmin").backups) == backups  # a dry run backs nothing up
    code, out, err = run_cli(capsys, "relocate-artifacts", "--apply", "--yes")
    assert code == 0, err
    assert seen == [["relocate-artifacts"], ["relocate-artifacts", "--apply"]]
    new = [b for b in seeded.api("sqladmin").backups.values()][backups:]
    assert [b["description"] for b in new] == ["before relocating artifact locations"]
    methods = [r.method_id for r in seeded.mutating_requests()]
    assert methods.index("sql.backupRuns.insert") < len(methods) - 1 - methods[::-1].index("run.projects.locations.jobs.run")
    assert f"rewrote 2 artifact location(s) under gs://{SEED.bucket}/" in out


def test_doctor_without_permission_to_list_keys_says_it_did_not_check(seeded, workdir, capsys):
    _config(workdir)
    assert run_cli(capsys, "up", "--yes")[0] == 0
    seeded.deny_permission("iam.serviceAccounts.list", method_id="iam.projects.serviceAccounts.list")
    code, out, _ = run_cli(capsys, "doctor")
    assert "WARN  no old key files: not checked:" in out and "iam.serviceAccounts.list" in out
