"""The fake's core, driven with the real google-api-python-client: discovery routing and
validation, Google's error shape, faults, the request log, operations and SERVICE_DISABLED."""

from __future__ import annotations

import json

import pytest
import requests
from googleapiclient.errors import HttpError

from tests.fakegcp import FakeGcp
from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401

P = "proj-core"
INSTANCE = {"name": "db1", "databaseVersion": "POSTGRES_16", "region": "europe-west1",
            "settings": {"tier": "db-f1-micro"}}


def error_of(exc: HttpError) -> dict:
    return json.loads(exc.content)["error"]


@pytest.fixture
def sql(gcp_client):
    return gcp_client("sqladmin", "v1")


def test_misspelled_nested_field_is_a_400_naming_the_field(fake_gcp, sql):
    body = {**INSTANCE, "settings": {"tier": "db-f1-micro",
                                     "backupConfiguration": {"enabled": True, "startTme": "03:00"}}}
    with pytest.raises(HttpError) as info:
        sql.instances().insert(project=P, body=body).execute()
    err = error_of(info.value)
    assert info.value.status_code == 400
    assert err["status"] == "INVALID_ARGUMENT"
    assert '"startTme"' in err["message"] and "settings.backupConfiguration" in err["message"]
    assert err["details"][0]["fieldViolations"][0]["field"] == "settings.backupConfiguration.startTme"
    assert fake_gcp.state("sqladmin") == {}


def test_wrong_type_and_unknown_enum_are_400(fake_gcp, sql):
    with pytest.raises(HttpError) as info:
        sql.instances().insert(project=P, body={**INSTANCE, "settings": {"tier": 5}}).execute()
    assert info.value.status_code == 400 and "settings.tier" in error_of(info.value)["message"]
    with pytest.raises(HttpError) as info:
        sql.instances().insert(project=P, body={**INSTANCE, "databaseVersion": "POSTGRES_99"}).execute()
    assert info.value.status_code == 400 and "databaseVersion" in error_of(info.value)["message"]
    with pytest.raises(HttpError) as info:
        sql.instances().insert(project=P, body={**INSTANCE, "settings": {
            "tier": "db-f1-micro", "ipConfiguration": {"authorizedNetworks": {"value": "x"}}}}).execute()
    assert info.value.status_code == 400


def test_arrays_and_maps_are_checked_inside(fake_gcp, gcp_client):
    run = gcp_client("run", "v2")
    body = {"template": {"containers": [{"image": "img", "env": [{"name": "A", "valu": "1"}]}]}}
    with pytest.raises(HttpError) as info:
        run.projects().locations().services().create(
            parent=f"projects/{P}/locations/r", serviceId="s", body=body).execute()
    assert error_of(info.value)["details"][0]["fieldViolations"][0]["field"] == \
        "template.containers[0].env[0].valu"
    st = gcp_client("storage", "v1")
    with pytest.raises(HttpError):
        st.buckets().insert(project=P, body={"name": "b-core", "labels": {"k": 3}}).execute()


def test_unknown_query_parameter_and_missing_required_one(fake_gcp):
    r = requests.get(f"{fake_gcp.url}/sqladmin/v1/projects/{P}/instances?pageSizee=3")
    assert r.status_code == 400 and "pageSizee" in r.json()["error"]["message"]
    r = requests.get(f"{fake_gcp.url}/storage/storage/v1/b")  # project is required
    assert r.status_code == 400 and "project" in r.json()["error"]["message"]


def test_query_booleans_are_read_as_google_reads_them(fake_gcp):
    # `gcloud storage` sends Python's str(bool); Google accepts it, and other spellings not.
    requests.post(f"{fake_gcp.url}/storage/storage/v1/b?project={P}", json={"name": f"{P}-bools"})
    for value in ("True", "False", "true"):
        r = requests.get(f"{fake_gcp.url}/storage/storage/v1/b/{P}-bools/o?versions={value}")
        assert r.status_code == 200, r.text
    assert [r.query["versions"] for r in fake_gcp.requests[-3:]] == ["True", "False", "true"]
    r = requests.get(f"{fake_gcp.url}/storage/storage/v1/b/{P}-bools/o?versions=yes")
    assert r.status_code == 400


def test_unknown_path_wrong_method_and_unimplemented(fake_gcp):
    assert requests.get(f"{fake_gcp.url}/sqladmin/v9/nothing").status_code == 404
    assert requests.get(f"{fake_gcp.url}/nosuchapi/v1/x").status_code == 404
    r = requests.put(f"{fake_gcp.url}/sqladmin/v1/projects/{P}/operations/x", json={})
    assert r.status_code == 405
    r = requests.post(f"{fake_gcp.url}/sqladmin/v1/projects/{P}/instances/db1/export", json={})
    assert r.status_code == 501 and r.json()["error"]["status"] == "UNIMPLEMENTED"


def test_a_cloud_sql_creation_takes_minutes_on_the_fakes_clock(fake_gcp, sql):
    op = sql.instances().insert(project=P, body=INSTANCE).execute()
    poll = lambda: sql.operations().get(project=P, operation=op["name"]).execute()["status"]  # noqa: E731
    assert [poll() for _ in range(5)] == ["RUNNING"] * 5, "polls alone do not finish it"
    fake_gcp.advance(5 * 60)
    assert poll() == "RUNNING", "Google: creating an instance takes 5 to 15 minutes"
    assert fake_gcp.state("sqladmin")[f"{P}/db1"]["state"] == "PENDING_CREATE"
    fake_gcp.advance(6 * 60)
    assert poll() == "DONE"
    assert fake_gcp.state("sqladmin")[f"{P}/db1"]["state"] == "RUNNABLE"


def test_the_clock_moves_when_a_client_sleeps_on_it(fake_gcp):
    before = requests.get(f"{fake_gcp.url}/_fake/clock").json()["now"]
    after = requests.post(f"{fake_gcp.url}/_fake/clock:sleep", json={"seconds": 90}).json()["now"]
    assert after == before + 90 == fake_gcp.now()
    assert fake_gcp.requests == [], "the clock is not a Google API: not in the request log"


def test_operation_completes_after_configured_polls(fake_gcp, sql):
    fake_gcp.strict(False)  # polls only, to test them alone
    fake_gcp.op_polls = 3
    op = sql.instances().insert(project=P, body=INSTANCE).execute()
    assert op["status"] == "PENDING"
    assert fake_gcp.state("sqladmin")[f"{P}/db1"]["state"] == "PENDING_CREATE"
    seen = [sql.operations().get(project=P, operation=op["name"]).execute()["status"]
            for _ in range(3)]
    assert seen == ["RUNNING", "RUNNING", "DONE"]
    assert fake_gcp.state("sqladmin")[f"{P}/db1"]["state"] == "RUNNABLE"


def test_zero_polls_means_done_at_once(fake_gcp, gcp_client):
    fake_gcp.strict(False)  # no duration either
    fake_gcp.op_polls = 0
    run = gcp_client("run", "v2")
    op = run.projects().locations().services().create(
        parent=f"projects/{P}/locations/r", serviceId="s",
        body={"template": {"containers": [{"image": "img"}]}}).execute()
    assert op["done"] and op["response"]["terminalCondition"]["state"] == "CONDITION_SUCCEEDED"


def test_fail_at_nth_matching_call(fake_gcp, sql):
    fake_gcp.fail(status=429, at_call=2, method="GET", path_regex=r"/instances$",
                  message="Quota exceeded", reason="rateLimitExceeded")
    sql.instances().list(project=P).execute()
    with pytest.raises(HttpError) as info:
        sql.instances().list(project=P).execute()
    err = error_of(info.value)
    assert info.value.status_code == 429 and err["status"] == "RESOURCE_EXHAUSTED"
    assert err["message"] == "Quota exceeded" and err["errors"][0]["reason"] == "rateLimitExceeded"
    sql.instances().list(project=P).execute()  # only the 2nd call fails
    assert [r.status for r in fake_gcp.requests] == [200, 429, 200]
    assert fake_gcp.requests[1].injected


def test_fail_mutation_counts_only_mutating_calls(fake_gcp, gcp_client, sql):
    crm = gcp_client("cloudresourcemanager", "v1")
    fake_gcp.fail_mutation(2, status=503)
    crm.projects().getIamPolicy(resource=P, body={}).execute()  # POST, but a read
    sql.instances().insert(project=P, body=INSTANCE).execute()  # mutation 1
    sql.instances().get(project=P, instance="db1").execute()
    with pytest.raises(HttpError) as info:  # mutation 2
        sql.instances().insert(project=P, body={**INSTANCE, "name": "db2"}).execute()
    assert info.value.status_code == 503
    assert f"{P}/db2" not in fake_gcp.state("sqladmin")
    assert [r.method_id for r in fake_gcp.mutating_requests()] == ["sql.instances.insert"] * 2
    assert not fake_gcp.requests[0].mutating


def test_fault_after_apply_changes_state_then_errors(fake_gcp, gcp_client):
    iam = gcp_client("iam", "v1")
    fake_gcp.fail(status=500, method_id="iam.projects.serviceAccounts.create", after_apply=True)
    with pytest.raises(HttpError):
        iam.projects().serviceAccounts().create(name=f"projects/{P}", body={"accountId": "server-sa"}).execute()
    assert f"server-sa@{P}.iam.gserviceaccount.com" in fake_gcp.state("iam")
    with pytest.raises(HttpError) as info:  # a naive retry now meets ALREADY_EXISTS
        iam.projects().serviceAccounts().create(name=f"projects/{P}", body={"accountId": "server-sa"}).execute()
    assert info.value.status_code == 409 and error_of(info.value)["status"] == "ALREADY_EXISTS"


def test_latency_rule_delays_but_answers(fake_gcp, sql):
    fake_gcp.add_latency(0.05, api="sqladmin")
    assert sql.instances().list(project=P).execute()["kind"] == "sql#instancesList"


def test_service_disabled_shape_and_enabling_lifts_it(fake_gcp, gcp_client, sql):
    fake_gcp.disable_api("sqladmin")
    with pytest.raises(HttpError) as info:
        sql.instances().list(project=P).execute()
    err = error_of(info.value)
    assert info.value.status_code == 403 and err["status"] == "PERMISSION_DENIED"
    detail = err["details"][0]
    assert detail["reason"] == "SERVICE_DISABLED"
    assert detail["metadata"]["service"] == "sqladmin.googleapis.com"
    assert "Cloud SQL Admin API has not been used in project" in err["message"]

    su = gcp_client("serviceusage", "v1")
    name = f"projects/{P}/services/sqladmin.googleapis.com"
    assert su.services().get(name=name).execute()["state"] == "DISABLED"
    op = su.operations().get(name=su.services().enable(name=name, body={}).execute()["name"]).execute()
    assert not op["done"]
    with pytest.raises(HttpError):  # not enabled until the operation is done
        sql.instances().list(project=P).execute()
    fake_gcp.advance(20)
    op = su.operations().get(name=op["name"]).execute()
    assert op["done"] and op["response"]["service"]["state"] == "ENABLED"
    assert su.services().get(name=name).execute()["state"] == "ENABLED"
    # Google: enabled, yet "If you enabled this API recently, wait a few minutes for the action to
    # propagate to our systems and retry": the same 403 until then.
    with pytest.raises(HttpError) as info:
        sql.instances().list(project=P).execute()
    assert error_of(info.value)["details"][0]["reason"] == "SERVICE_DISABLED"
    assert "If you enabled this API recently, wait a few minutes" in error_of(info.value)["message"]
    fake_gcp.advance(fake_gcp.api_propagation_seconds)
    assert sql.instances().list(project=P).execute()["kind"] == "sql#instancesList"


def test_new_project_with_everything_disabled_batch_enable(gcp_client):
    fake = FakeGcp(services_enabled=False, op_polls=0, strict=False).start()
    try:
        from tests.fakegcp.client import build_client
        su = build_client(fake.url, "serviceusage", "v1")
        op = su.services().batchEnable(parent=f"projects/{P}", body={"serviceIds": [
            "run.googleapis.com", "iam.googleapis.com"]}).execute()
        assert op["done"] and len(op["response"]["services"]) == 2
        listed = su.services().list(parent=f"projects/{P}", filter="state:ENABLED").execute()
        assert {s["config"]["name"] for s in listed["services"]} == {
            "run.googleapis.com", "iam.googleapis.com",
            # on in every new project, as Google does
            "storage.googleapis.com", "storage-api.googleapis.com", "logging.googleapis.com", "serviceusage.googleapis.com"}
        with pytest.raises(HttpError) as info:
            build_client(fake.url, "secretmanager", "v1").projects().secrets().list(parent=f"projects/{P}").execute()
        assert error_of(info.value)["details"][0]["metadata"]["service"] == "secretmanager.googleapis.com"
    finally:
        fake.stop()


def test_request_log_records_api_path_query_body(fake_gcp, gcp_client):
    st = gcp_client("storage", "v1")
    st.buckets().insert(project=P, body={"name": "log-bkt"}).execute()
    rec = fake_gcp.requests[-1]
    assert (rec.method, rec.api, rec.path, rec.status) == ("POST", "storage", "storage/v1/b", 200)
    assert rec.query["project"] == P and rec.body == {"name": "log-bkt"}
    assert rec.method_id == "storage.buckets.insert" and rec.mutating


def test_fixture_gives_fresh_state(fake_gcp):
    assert fake_gcp.state("sqladmin") == {} and fake_gcp.requests == []
    assert fake_gcp.faults.rules == []


def _deploy_like(gcp_client, name="db1"):
    sql = gcp_client("sqladmin", "v1")
    op = sql.instances().insert(project=P, body={**INSTANCE, "name": name}).execute()
    sql.operations().get(project=P, operation=op["name"]).execute()
    sql.users().insert(project=P, instance=name, body={"name": "u", "password": "random-1"}).execute()
    run = gcp_client("run", "v2")
    run.projects().locations().services().create(
        parent=f"projects/{P}/locations/r", serviceId="s",
        body={"template": {"containers": [{"image": "img"}]}}).execute()
    gcp_client("secretmanager", "v1").projects().secrets().create(
        parent=f"projects/{P}", secretId="pw", body={"replication": {"automatic": {}}}).execute()


def test_snapshot_equal_for_identical_runs_and_shows_differences(fake_gcp, gcp_client):
    fake_gcp.strict(False)  # _deploy_like polls each operation once
    _deploy_like(gcp_client)
    first = fake_gcp.snapshot()
    assert "random-1" not in repr(first) and first["sqladmin"]["users"][f"{P}/db1/u@"]["password"] == "<set>"
    fake_gcp.reset()
    fake_gcp.strict(False)
    _deploy_like(gcp_client)
    assert fake_gcp.snapshot() == first
    fake_gcp.reset()
    fake_gcp.strict(False)
    _deploy_like(gcp_client, name="db2")
    assert fake_gcp.snapshot()["sqladmin"] != first["sqladmin"]


def test_a_bug_in_the_fake_is_a_500_with_its_traceback_kept(fake_gcp, sql, monkeypatch):
    def broken(req):
        raise KeyError("oops")

    monkeypatch.setitem(fake_gcp.api("sqladmin").handlers, (None, "sql.instances.list"), broken)
    with pytest.raises(HttpError) as info:
        sql.instances().list(project=P).execute()
    assert info.value.status_code == 500 and b"fakegcp internal error" in info.value.content
    assert "KeyError" in fake_gcp.internal_errors[0]
    fake_gcp.internal_errors.clear()  # the fixture fails a test whose fake had a bug


def test_deny_permission_has_googles_shape_and_shows_in_test_permissions(fake_gcp, gcp_client):
    fake_gcp.deny_permission("run.services.create", method_id="run.projects.locations.services.create")
    run = gcp_client("run", "v2").projects().locations().services()
    with pytest.raises(HttpError) as info:
        run.create(parent=f"projects/{P}/locations/r", serviceId="s",
                   body={"template": {"containers": [{"image": "img"}]}}).execute()
    err = error_of(info.value)
    assert info.value.status_code == 403 and err["status"] == "PERMISSION_DENIED"
    assert "run.services.create" in err["message"]
    assert err["details"][0]["reason"] == "IAM_PERMISSION_DENIED"
    assert err["details"][0]["metadata"]["permission"] == "run.services.create"
    crm = gcp_client("cloudresourcemanager", "v1").projects()
    held = crm.testIamPermissions(resource=P, body={"permissions": [
        "run.services.create", "run.services.get"]}).execute()
    assert held == {"permissions": ["run.services.get"]}
    st = gcp_client("storage", "v1")
    st.buckets().insert(project=P, body={"name": "perm-bkt"}).execute()
    got = st.buckets().testIamPermissions(bucket="perm-bkt", permissions=["storage.objects.get"]).execute()
    assert got["permissions"] == ["storage.objects.get"]


def test_proto_json_formats_are_strict(fake_gcp, gcp_client):
    run = gcp_client("run", "v2").projects().locations().services()
    with pytest.raises(HttpError) as info:
        run.create(parent=f"projects/{P}/locations/r", serviceId="s",
                   body={"template": {"timeout": "300", "containers": [{"image": "img"}]}}).execute()
    assert info.value.status_code == 400 and "template.timeout" in error_of(info.value)["message"]
    op = run.create(parent=f"projects/{P}/locations/r", serviceId="s",
                    body={"template": {"timeout": "300s", "containers": [{"image": "img"}]}}).execute()
    assert op["name"]


def test_standalone_process_serves_the_same_contract():
    from tests.fakegcp.client import build_client
    from tests.fakegcp.standalone import StandaloneFake

    with StandaloneFake(op_polls=0, strict=False) as fake:
        sql = build_client(fake.url, "sqladmin", "v1")
        op = sql.instances().insert(project=P, body=INSTANCE).execute()
        assert op["status"] == "DONE"
        assert sql.instances().get(project=P, instance="db1").execute()["state"] == "RUNNABLE"
        proc = fake.proc
    assert proc.poll() is not None  # stopped with the context
