"""`plan` and `up` against the stateful fake of Google's APIs (tests/fakegcp).

The fake validates every request body against the discovery documents, so a misspelled field
fails here. Operations finish after one poll and the poll interval is 0: a whole `up` takes a
fraction of a second, which is what lets us interrupt it at every mutating call.
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from mlflow_gcp import config
from mlflow_gcp.cli import main as cli_main
from mlflow_gcp.errors import ApiDisabled, BudgetError, Conflict, ConfigError, PermissionDenied, RateLimited, Unavailable
from mlflow_gcp.gcp import errors as gerrors
from mlflow_gcp.gcp.clients import Clients
from mlflow_gcp.ops import up as up_ops
from mlflow_gcp.plan import desired
from mlflow_gcp.plan.steps import Context

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401

PROJECT = "acme-ml-prod"
SERVICE = f"projects/{PROJECT}/locations/europe-west9/services/mlflow-tracking"
MEMBER = "user:ann@example.com"


def make_cfg(**overrides) -> config.Config:
    data = {"project": PROJECT, "access": {"members": [MEMBER]}}
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        data.setdefault(section, {})[field] = value
    return config.from_dict(data)


def make_ctx(cfg, lines=None, retry=gerrors.NO_RETRY, sleeps=None, poll_interval=None):
    # Time is the fake's clock (MLFLOW_GCP_EMULATOR_CLOCK); with `sleeps`, each wait is also noted.
    clients = Clients.from_env(cfg.project, retry=retry)
    if poll_interval is not None:
        clients.poll_interval = poll_interval
    if sleeps is not None:
        advance = clients.sleep
        clients.sleep = lambda s: (sleeps.append(s), advance(s))
    return Context(cfg, clients, say=(lines.append if lines is not None else (lambda s: None)))


def up(cfg, **kw):
    ctx = make_ctx(cfg, **kw)
    return up_ops.apply(ctx, up_ops.make_plan(ctx))


def plan(cfg):
    return up_ops.make_plan(make_ctx(cfg))


# ------------------------------------------------------------------ normalised fake state

# History, not state: how many revisions were rolled out, how often the migration job ran, how
# many builds ran (an interrupted run may deploy, migrate or build once more, harmlessly).
_HISTORY_KEYS = ("latestCreatedExecution", "executionCount", "latestCreatedRevision", "latestReadyRevision",
                 "generation", "observedGeneration")


def snapshot(fake) -> dict:
    """Every resource the fake holds, normalised by the fake (times, etags, ids, digests and
    secret values masked), without deployment history."""
    snap = fake.snapshot(ignore=_HISTORY_KEYS)
    snap["run"].pop("revisions", None)
    snap["run"].pop("executions", None)
    snap.pop("cloudbuild", None)
    # Build sources are named by their content, which may change while the tests run (a shared
    # work tree); one source object per run is what matters.
    return json.loads(re.sub(r"source-[0-9a-f]{16}", "source-<hash>", json.dumps(snap)))


def differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k), b.get(k), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def user_password(fake) -> str | None:
    for key, user in fake.modules["sqladmin"].users.items():
        if key.split("/")[-1].split("@")[0] == "mlflow":
            return user.get("password")
    return None


def secret_payloads(fake) -> list[str]:
    try:
        return [fake.modules["secretmanager"].payload_of(PROJECT, "mlflow-tracking-db-password").decode()]
    except Exception:
        return []


# ------------------------------------------------------------------ tests


def test_fresh_up_creates_everything_with_the_expected_fields(fake_gcp):
    cfg = make_cfg()
    result = up(cfg)
    assert result.service is not None and result.service.uri.endswith(".run.app")

    inst = fake_gcp.state("sqladmin")[f"{PROJECT}/mlflow-db"]
    s = inst["settings"]
    assert inst["databaseVersion"] == "POSTGRES_15" and inst["region"] == "europe-west9"
    assert s["tier"] == "db-f1-micro" and s["edition"] == "ENTERPRISE"
    assert s["deletionProtectionEnabled"] is True
    b = s["backupConfiguration"]
    assert b["enabled"] and b["startTime"] == "03:00" and b["pointInTimeRecoveryEnabled"]
    assert b["transactionLogRetentionDays"] == 7 and b["backupRetentionSettings"]["retainedBackups"] == 8
    assert s["maintenanceWindow"]["day"] == 7 and s["maintenanceWindow"]["hour"] == 4
    assert s["ipConfiguration"]["sslMode"] == "ENCRYPTED_ONLY"
    assert not s["ipConfiguration"].get("authorizedNetworks")
    assert s["userLabels"]["managed-by"] == "mlflow-gcp"

    bucket = fake_gcp.state("storage")[cfg.bucket_name]
    assert bucket["location"] == "EUROPE-WEST9"
    assert bucket["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"] is True
    assert bucket["iamConfiguration"]["publicAccessPrevention"] == "enforced"
    rules = bucket["lifecycle"]["rule"]
    assert rules[0]["action"] == {"type": "SetStorageClass", "storageClass": "NEARLINE"}
    # Nothing deletes artifacts outside our own build-staging prefix.
    assert all(r["condition"].get("matchesPrefix") for r in rules if r["action"]["type"] == "Delete")

    svc = fake_gcp.state("run")[SERVICE]
    tmpl = svc["template"]
    c = tmpl["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["DB_PASSWORD"]["valueSource"]["secretKeyRef"]["secret"] == "mlflow-tracking-db-password"
    assert "value" not in env["DB_PASSWORD"]
    assert env["DB_MIGRATE"]["value"] == "never" and env["LOG_FORMAT"]["value"] == "json"
    assert env["INSTANCE_CONNECTION_NAME"]["value"] == f"{PROJECT}:europe-west9:mlflow-db"
    hosts = env["ALLOWED_HOSTS"]["value"].split(",")
    for url in svc["urls"]:
        assert url.removeprefix("https://") in hosts
    assert tmpl["serviceAccount"] == cfg.server_service_account_email
    assert "compute@developer" not in json.dumps(svc)
    assert tmpl["volumes"][0]["cloudSqlInstance"]["instances"] == [cfg.instance_connection_name]
    assert c["volumeMounts"] == [{"name": "cloudsql", "mountPath": "/cloudsql"}]
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["ports"][0]["containerPort"] == 8080
    assert c["image"].startswith(cfg.image_uri + "@sha256:")

    job = fake_gcp.modules["run"].jobs[f"projects/{PROJECT}/locations/europe-west9/jobs/mlflow-tracking-migrate"]
    jc = job["template"]["template"]["containers"][0]
    assert jc["args"] == ["migrate"] and jc["image"] == c["image"]
    assert fake_gcp.modules["run"].executions, "the migration job ran"

    invokers = json.dumps(fake_gcp.modules["run"].iam.policies)
    assert MEMBER in invokers and "allUsers" not in invokers
    assert user_password(fake_gcp) in secret_payloads(fake_gcp)


def test_second_up_makes_zero_mutating_calls_and_says_no_changes(fake_gcp, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlflow-gcp.toml").write_text(config.to_toml(make_cfg()))
    assert cli_main.main(["up", "--yes"]) == 0
    first = capsys.readouterr().out
    assert "export MLFLOW_TRACKING_URI=https://" in first and "export MLFLOW_TRACKING_AUTH=gcp" in first
    assert "health check skipped" in first
    fake_gcp.clear_log()
    assert cli_main.main(["up", "--yes"]) == 0
    second = capsys.readouterr().out
    assert "No changes." in second
    assert fake_gcp.mutating_requests() == []
    history = (tmp_path / ".mlflow-gcp" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2, "every run leaves a record"
    record, unchanged = json.loads(history[0]), json.loads(history[1])
    assert unchanged["changed"] == [] and unchanged["revision"] == record["revision"]
    assert record["image_digest"].startswith("sha256:") and record["revision"].startswith("mlflow-tracking-")
    assert any("Cloud SQL instance" in c for c in record["changed"])


def test_changing_max_instances_shows_that_field_and_patches_only_the_service(fake_gcp):
    up(make_cfg())
    changed = make_cfg(service__max_instances=4)
    p = plan(changed)
    assert [(a.kind, [str(c) for c in a.changes]) for a in p.changes] == [
        ("Cloud Run service", [
            "template.scaling.maxInstanceCount (service.max_instances): 10 -> 4",
            # Derived: fewer instances may each open more connections within the tier's budget.
            "template.containers[mlflow].env[DB_CONNECTIONS].value (connection budget per instance): 2 -> 5",
        ])
    ]
    fake_gcp.clear_log()
    up(changed)
    writes = fake_gcp.mutating_requests()
    assert [r.method_id for r in writes] == ["run.projects.locations.services.patch"]
    assert fake_gcp.state("run")[SERVICE]["template"]["scaling"]["maxInstanceCount"] == 4
    fake_gcp.clear_log()
    assert plan(changed).empty and fake_gcp.mutating_requests() == []


def test_plan_json_lists_every_resource_and_the_cost(fake_gcp, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main.main(["plan", "--json", "--project", PROJECT]) == 0
    data = json.loads(capsys.readouterr().out)
    kinds = {r["resource"] for r in data["resources"]}
    assert {"Cloud SQL instance", "bucket", "Cloud Run service", "Cloud Run job", "secret"} <= kinds
    assert data["changes"] == len([r for r in data["resources"] if r["action"] != "no change"])
    assert data["cost"]["monthly_total"] > 0 and data["cost"]["prices_as_of"]
    assert fake_gcp.mutating_requests() == [], "plan never writes"


def let_google_finish(fake) -> None:
    """Time passes: every operation Google started completes, whether or not anyone polls it (a
    create whose response was lost still finishes on Google's side)."""
    from tests.fakegcp.core.api import Operation

    fake.advance(3600)
    with fake.lock:
        for module in fake.modules.values():
            for op in list((getattr(module, "ops", None) or {}).values()):
                if isinstance(op, Operation):
                    while not op.done:
                        op.poll()


# A lost answer to these is followed by a look for what the call made (gcp.operations.send_once).
SENT_ONCE = {"cloudbuild.projects.builds.create", "run.projects.locations.jobs.run"}


def _quick(fake) -> None:
    # Interruptions are the subject here, not waiting: operations take no time (propagation
    # delays stay on, so a rerun still meets accounts and APIs Google does not know yet).
    fake.realistic_durations = False


def _fresh_reference(fake) -> tuple[dict, int]:
    fake.reset()
    _quick(fake)
    up(make_cfg())
    return snapshot(fake), len(fake.mutating_requests())


@pytest.mark.parametrize("after_apply", [False, True], ids=["call-refused", "response-lost"])
def test_an_up_interrupted_at_any_mutating_call_converges_when_rerun(fake_gcp, after_apply):
    expected, total = _fresh_reference(fake_gcp)
    assert total >= 15
    for n in range(1, total + 1):
        fake_gcp.reset()
        _quick(fake_gcp)
        fake_gcp.fail_mutation(n, status=500, after_apply=after_apply)
        try:
            up(make_cfg())
        except Unavailable:
            pass
        else:
            # Only a call that must not be repeated blindly is checked for and recovered at once.
            hit = [r.method_id for r in fake_gcp.requests if r.injected]
            assert after_apply and hit[0] in SENT_ONCE, f"fault at mutating call {n} ({hit}) went unnoticed"
        fake_gcp.clear_faults()
        let_google_finish(fake_gcp)
        up(make_cfg())
        assert user_password(fake_gcp) in secret_payloads(fake_gcp), f"password out of sync after fault {n}"
        got = snapshot(fake_gcp)
        assert got == expected, f"fault at mutating call {n}: {differences(got, expected)[:5]}"
        fake_gcp.clear_log()
        assert plan(make_cfg()).empty, f"not converged after fault {n}"
        assert fake_gcp.mutating_requests() == []


def test_a_resource_deleted_out_of_band_shows_in_plan_and_is_recreated(fake_gcp):
    cfg = make_cfg()
    up(cfg)
    del fake_gcp.state("storage")[cfg.bucket_name]
    p = plan(cfg)
    assert [(a.verb, a.kind) for a in p.changes][:1] == [("create", "bucket")]
    up(cfg)
    assert cfg.bucket_name in fake_gcp.state("storage")
    assert plan(cfg).empty


def test_a_bucket_setting_changed_out_of_band_is_set_back(fake_gcp):
    cfg = make_cfg()
    up(cfg)
    fake_gcp.state("storage")[cfg.bucket_name]["iamConfiguration"]["publicAccessPrevention"] = "inherited"
    p = plan(cfg)
    assert [str(c) for a in p.changes for c in a.changes] == [
        "iamConfiguration.publicAccessPrevention: inherited -> enforced"
    ]
    fake_gcp.clear_log()
    up(cfg)
    assert [r.method_id for r in fake_gcp.mutating_requests()] == ["storage.buckets.patch"]


def test_an_existing_mysql_instance_with_our_name_is_a_clear_error(fake_gcp, gcp_client):
    sqladmin = gcp_client("sqladmin", "v1")
    sqladmin.instances().insert(project=PROJECT, body={
        "name": "mlflow-db", "region": "europe-west9", "databaseVersion": "MYSQL_8_0",
        "settings": {"tier": "db-f1-micro"},
    }).execute()
    with pytest.raises(Conflict) as err:
        plan(make_cfg())
    assert "databaseVersion is MYSQL_8_0, not POSTGRES_15" in str(err.value)
    assert "database.instance" in str(err.value)


def test_an_adopted_user_gets_its_password_from_the_secret(fake_gcp, gcp_client):
    cfg = make_cfg()
    up(cfg)
    # Someone recreated the user by hand with a password we do not know.
    fake_gcp.state("secretmanager")
    secret = next(iter(fake_gcp.state("secretmanager").values()))
    secret["annotations"] = {}
    p = plan(cfg)
    assert [(a.kind, a.detail) for a in p.changes] == [("database user", "set its password from the secret")]
    up(cfg)
    assert user_password(fake_gcp) in secret_payloads(fake_gcp)
    assert plan(cfg).empty


def test_permission_denied_names_the_role_and_the_command(fake_gcp):
    fake_gcp.fail(403, method_id="sql.instances.insert",
                  message="The client is not authorized to make this request.", reason="notAuthorized",
                  grpc_status="PERMISSION_DENIED")
    with pytest.raises(PermissionDenied) as err:
        up(make_cfg())
    text = str(err.value)
    assert "roles/cloudsql.admin" in text
    assert f"gcloud projects add-iam-policy-binding {PROJECT}" in text
    assert "creating Cloud SQL instance mlflow-db" in text


def test_a_disabled_api_is_enabled_by_up(fake_gcp):
    fake_gcp.disable_api("sqladmin", project=PROJECT)
    p = plan(make_cfg())
    apis = p.actions[0]
    assert apis.kind == "APIs" and "sqladmin.googleapis.com" in apis.detail
    up(make_cfg())
    assert fake_gcp.service_enabled(PROJECT, "sqladmin.googleapis.com")
    assert f"{PROJECT}/mlflow-db" in fake_gcp.state("sqladmin")


def test_a_disabled_api_is_named_in_the_error(fake_gcp):
    fake_gcp.disable_api("sqladmin", project=PROJECT)
    ctx = make_ctx(make_cfg())
    from mlflow_gcp.gcp import sql

    with pytest.raises(ApiDisabled) as err:
        sql.get_instance(ctx.clients, "mlflow-db")
    assert "sqladmin.googleapis.com" in str(err.value) and "gcloud services enable" in str(err.value)


def test_429_and_5xx_are_retried_with_backoff_then_succeed(fake_gcp):
    fake_gcp.strict(False)  # operations done in one poll, and polls do not sleep: only backoffs are noted
    fake_gcp.fail(429, method_id="storage.buckets.insert", times=2)
    fake_gcp.fail(503, method_id="run.projects.locations.services.create", times=1)
    sleeps: list[float] = []
    up(make_cfg(), retry=gerrors.RetryPolicy(budget_seconds=60), sleeps=sleeps, poll_interval=0)
    backoffs = [s for s in sleeps if s]  # polls sleep 0 here
    assert backoffs == [1.0, 2.0, 1.0], "exponential per call, reset for the next call"
    assert make_cfg().bucket_name in fake_gcp.state("storage")


def test_retries_stop_at_the_time_budget_with_a_clear_error(fake_gcp):
    fake_gcp.strict(False)  # as above
    fake_gcp.fail(503, method_id="storage.buckets.insert", times=100)
    sleeps: list[float] = []
    with pytest.raises(Unavailable) as err:
        up(make_cfg(), retry=gerrors.RetryPolicy(budget_seconds=10), sleeps=sleeps, poll_interval=0)
    assert "creating bucket" in str(err.value) and "still failing after" in str(err.value)
    # 1 + 2 + 4 = 7 s slept; the next delay (8 s) would pass the 10 s budget, so it stops.
    assert [s for s in sleeps if s] == [1.0, 2.0, 4.0]


def test_rate_limit_errors_map_to_rate_limited(fake_gcp):
    fake_gcp.fail(429, method_id="storage.buckets.insert", times=100)
    with pytest.raises(RateLimited):
        up(make_cfg())


@pytest.mark.parametrize("args", [
    ["--set", "service.max_instances=60"],
    ["--set", "access.mode=public"],
    ["--set", "database.tier=db-nope"],
])
def test_bad_config_is_rejected_before_any_api_call(fake_gcp, tmp_path, monkeypatch, capsys, args):
    monkeypatch.chdir(tmp_path)
    code = cli_main.main(["plan", "--project", PROJECT, *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("Error:") and len(err.strip().splitlines()) == 1
    assert fake_gcp.requests == []


def test_public_needs_the_flag_and_then_warns(fake_gcp, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main.main(["up", "--yes", "--project", PROJECT, "--set", "access.mode=public", "--allow-public"]) == 0
    assert "anyone on the internet" in capsys.readouterr().err
    assert fake_gcp.state("run")[SERVICE]["invokerIamDisabled"] is True
    assert "allUsers" not in json.dumps(fake_gcp.modules["run"].iam.policies)
    # Back to private: the invoker check is on again.
    assert cli_main.main(["up", "--yes", "--project", PROJECT]) == 0
    assert fake_gcp.state("run")[SERVICE]["invokerIamDisabled"] is False


def test_budget_error_names_the_knob():
    with pytest.raises(BudgetError) as err:
        up_ops.check_config(make_cfg(service__max_instances=60), allow_public=False)
    assert "max_instances" in str(err.value)
    with pytest.raises(ConfigError):
        up_ops.check_config(make_cfg(access__mode="public"), allow_public=False)


def test_no_secret_in_any_output_or_log(fake_gcp, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    assert cli_main.main(["--debug", "up", "--yes", "--project", PROJECT]) == 0
    assert cli_main.main(["plan", "--json", "--project", PROJECT]) == 0
    # Force a password reset path too (adoption), which reads the secret.
    next(iter(fake_gcp.state("secretmanager").values()))["annotations"] = {}
    assert cli_main.main(["--debug", "up", "--yes", "--project", PROJECT]) == 0
    password = user_password(fake_gcp)
    assert password and len(password) >= 32
    out = capsys.readouterr()
    everything = out.out + out.err + caplog.text + "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert password not in everything
    assert password not in json.dumps(fake_gcp.state("run"))


def test_a_non_default_config_converges_too(fake_gcp):
    cfg = config.from_dict({
        "project": PROJECT, "region": "us-central1", "labels": {"team": "ml"},
        "service": {"min_instances": 1, "max_instances": 3, "cpu": "2", "memory": "2Gi", "workers": 2},
        "database": {"tier": "db-custom-1-3840", "private_ip": True, "network": f"projects/{PROJECT}/global/networks/vpc",
                     "point_in_time_recovery": False, "deletion_protection": False},
        "artifacts": {"lifecycle": {"action": "delete", "days": 30, "prefix": "scratch/"}},
    })
    up(cfg)
    assert plan(cfg).empty
    inst = fake_gcp.state("sqladmin")[f"{PROJECT}/mlflow-db"]
    assert inst["settings"]["ipConfiguration"]["privateNetwork"].endswith("/networks/vpc")
    assert inst["settings"]["userLabels"] == {"managed-by": "mlflow-gcp", "team": "ml"}
    svc = fake_gcp.state("run")[f"projects/{PROJECT}/locations/us-central1/services/mlflow-tracking"]
    assert svc["template"]["vpcAccess"]["egress"] == "PRIVATE_RANGES_ONLY"
    rule = fake_gcp.state("storage")[cfg.bucket_name]["lifecycle"]["rule"][0]
    assert rule == {"action": {"type": "Delete"}, "condition": {"age": 30, "matchesPrefix": ["scratch/"]}}


def test_a_given_image_skips_the_registry_and_the_build(fake_gcp):
    cfg = make_cfg(service__image="us-docker.pkg.dev/acme-ml-prod/images/mlflow-gcp@sha256:" + "a" * 64)
    up(cfg)
    assert not fake_gcp.state("artifactregistry") and not fake_gcp.state("cloudbuild")
    assert fake_gcp.state("run")[SERVICE]["template"]["containers"][0]["image"] == cfg.service.image
    fake_gcp.clear_log()
    assert plan(cfg).empty and fake_gcp.mutating_requests() == []


def test_a_failed_operation_is_a_typed_error_naming_what_failed(fake_gcp):
    from mlflow_gcp.errors import OperationFailed

    fake_gcp.fail_next_operation(api="sqladmin", message="Insufficient quota in region.")
    with pytest.raises(OperationFailed) as err:
        up(make_cfg())
    assert "Cloud SQL instance mlflow-db to be created failed" in str(err.value)
    assert "Insufficient quota in region." in str(err.value)
    # Google leaves a FAILED instance behind: the next run says so and how to clear it.
    with pytest.raises(Conflict) as err:
        plan(make_cfg())
    assert "mlflow-db is FAILED (its creation failed)" in str(err.value)
    assert "gcloud sql instances delete mlflow-db" in str(err.value)


def test_a_slow_operation_shows_progress_and_times_out_with_its_name(fake_gcp):
    from mlflow_gcp.errors import OperationFailed
    from mlflow_gcp.gcp import sql

    up_to_database = make_cfg()
    sleeps: list[float] = []
    seen: list[tuple[str, float]] = []
    clients = make_ctx(up_to_database, sleeps=sleeps).clients
    fake_gcp.reset(op_polls=0)
    sql.create_instance(clients, desired.sql_instance(up_to_database))
    sleeps.clear()  # the creation's own polls (up to every 30 s: a half-hour timeout)
    fake_gcp.op_polls = 10_000  # from now on, operations never finish
    with pytest.raises(OperationFailed) as err:
        sql.create_database(clients, "mlflow-db", "mlflow", progress=lambda what, t: seen.append((what, t)))
    assert "timed out after" in str(err.value) and "waiting for database mlflow" in str(err.value)
    assert seen[0] == ("database mlflow", 0.0) and seen[-1][1] <= sql.SMALL_TIMEOUT_SECONDS
    assert max(sleeps) == 10.0, "polling backs off to its ceiling"


def test_a_new_image_migrates_before_it_rolls_out(fake_gcp):
    up(make_cfg())
    new_image = "europe-west9-docker.pkg.dev/acme-ml-prod/mlflow/mlflow-gcp@sha256:" + "b" * 64
    changed = make_cfg(service__image=new_image)
    p = plan(changed)
    assert [(a.kind, a.verb) for a in p.changes] == [
        ("Cloud Run job", "update"), ("schema migration", "run"), ("Cloud Run service", "update")]
    fake_gcp.clear_log()
    up(changed)
    assert [r.method_id for r in fake_gcp.mutating_requests()] == [
        "run.projects.locations.jobs.patch", "run.projects.locations.jobs.run", "run.projects.locations.services.patch"]
    assert fake_gcp.state("run")[SERVICE]["template"]["containers"][0]["image"] == new_image


def test_the_build_uploads_this_checkout_and_builds_with_the_packaged_dockerfile(fake_gcp):
    import io
    import tarfile

    cfg = make_cfg()
    up(cfg)
    [build] = fake_gcp.state("cloudbuild").values()
    source = build["source"]["storageSource"]
    assert source["bucket"] == cfg.bucket_name and source["object"].startswith(desired.BUILD_PREFIX)
    assert build["images"] == [cfg.image_uri]
    data = fake_gcp.modules["storage"].data[(cfg.bucket_name, source["object"])]
    names = tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:gz").getnames()
    assert "Dockerfile" in names and "pyproject.toml" in names
    assert "src/mlflow_gcp/server/__main__.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_a_concurrent_iam_change_is_reread_and_merged(fake_gcp):
    fake_gcp.fail(409, method_id="cloudresourcemanager.projects.setIamPolicy", grpc_status="ABORTED",
                  message="There were concurrent policy changes.")
    up(make_cfg())
    policy = json.dumps(fake_gcp.modules["cloudresourcemanager"].iam.policies)
    assert "roles/cloudsql.client" in policy
    sets = [r for r in fake_gcp.requests if r.method_id == "cloudresourcemanager.projects.setIamPolicy"]
    assert len(sets) == 2 and sets[0].status == 409


def test_up_without_a_terminal_or_yes_changes_nothing(fake_gcp, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main.main(["up", "--project", PROJECT]) == 4
    assert "rerun with --yes" in capsys.readouterr().err
    assert fake_gcp.mutating_requests() == []


def test_a_different_postgres_major_version_is_not_changed_silently(fake_gcp):
    up(make_cfg())
    with pytest.raises(Conflict) as err:
        plan(make_cfg(database__version="POSTGRES_16"))
    assert "databaseVersion is POSTGRES_15, not POSTGRES_16" in str(err.value)
    assert 'database.version = "POSTGRES_15"' in str(err.value)


def test_no_permission_to_list_apis_is_not_fatal(fake_gcp):
    fake_gcp.fail(403, api="serviceusage", times=1000, grpc_status="PERMISSION_DENIED",
                  message="Permission 'serviceusage.services.list' denied on resource 'projects/acme-ml-prod'")
    p = plan(make_cfg())
    assert p.actions[0].detail == "not checked: no permission to list enabled APIs"
    up(make_cfg())
    assert f"{PROJECT}/mlflow-db" in fake_gcp.state("sqladmin")


def test_an_existing_bucket_elsewhere_is_a_clear_error(fake_gcp, gcp_client):
    cfg = make_cfg()
    gcp_client("storage", "v1").buckets().insert(project=PROJECT, body={"name": cfg.bucket_name, "location": "US"}).execute()
    with pytest.raises(Conflict) as err:
        plan(cfg)
    assert f"bucket {cfg.bucket_name} exists in US, not EUROPE-WEST9" in str(err.value)
    assert "artifacts.location" in str(err.value)


def test_an_existing_non_docker_repository_is_a_clear_error(fake_gcp, gcp_client):
    repos = gcp_client("artifactregistry", "v1").projects().locations().repositories()
    repos.create(parent=f"projects/{PROJECT}/locations/europe-west9", repositoryId="mlflow",
                 body={"format": "MAVEN"}).execute()
    with pytest.raises(Conflict) as err:
        plan(make_cfg())
    assert "repository mlflow exists with format MAVEN, not DOCKER" in str(err.value)


def test_a_tier_change_patches_only_the_instance_and_warns_of_the_restart(fake_gcp, tmp_path, monkeypatch, capsys):
    up(make_cfg())
    bigger = make_cfg(database__tier="db-g1-small")
    p = plan(bigger)
    sql_action = next(a for a in p.changes if a.kind == "Cloud SQL instance")
    assert [str(c) for c in sql_action.changes] == ["settings.tier (database.tier): db-f1-micro -> db-g1-small"]
    assert "restarts the instance" in sql_action.detail
    fake_gcp.clear_log()
    up(bigger)
    sql_writes = [r for r in fake_gcp.mutating_requests() if r.api == "sqladmin"]
    assert [(r.method_id, r.body) for r in sql_writes] == [("sql.instances.patch", {"settings": {"tier": "db-g1-small"}})]


def test_a_busy_cloud_sql_instance_is_waited_out(fake_gcp):
    fake_gcp.strict(False)  # as above
    fake_gcp.fail(409, method_id="sql.databases.insert", times=4, reason="operationInProgress",
                  message="Operation failed because another operation was already in progress.")
    sleeps: list[float] = []
    up(make_cfg(), retry=gerrors.RetryPolicy(budget_seconds=5), sleeps=sleeps, poll_interval=0)
    assert [s for s in sleeps if s] == [1.0, 2.0, 4.0, 8.0], "longer than the default budget of 5 s here"
    assert plan(make_cfg()).empty


def test_a_bucket_name_taken_elsewhere_says_to_pick_another(fake_gcp, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fake_gcp.fail(409, method_id="storage.buckets.insert", grpc_status="CONFLICT",
                  message="The requested bucket name is not available. The bucket namespace is shared by all users.")
    assert cli_main.main(["up", "--yes", "--project", PROJECT]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bucket name acme-ml-prod-mlflow-artifacts is taken by another project" in err[0]
    assert "artifacts.bucket" in err[0]
