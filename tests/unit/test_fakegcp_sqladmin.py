"""Cloud SQL in the fake, driven by googleapiclient (v1, and v1beta4 as gcloud uses it)."""

from __future__ import annotations

import json

import pytest
from googleapiclient.errors import HttpError

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401

P = "proj-sql"
BODY = {
    "name": "mlflow-db", "databaseVersion": "POSTGRES_16", "region": "us-central1",
    "rootPassword": "root-secret",
    "settings": {
        "tier": "db-f1-micro", "deletionProtectionEnabled": True,
        "backupConfiguration": {"enabled": True, "startTime": "03:00", "pointInTimeRecoveryEnabled": True,
                                "backupRetentionSettings": {"retainedBackups": 14, "retentionUnit": "COUNT"}},
        "ipConfiguration": {"ipv4Enabled": True, "sslMode": "ENCRYPTED_ONLY", "authorizedNetworks": []},
        "maintenanceWindow": {"day": 7, "hour": 4},
    },
}


@pytest.fixture(autouse=True)
def _polls_only(fake_gcp):
    # These test each API's shapes and rules; Google's timing (durations, propagation) has its
    # own tests (test_fakegcp_core.py, test_fakegcp_timing.py) and is on everywhere else.
    fake_gcp.strict(False)


@pytest.fixture
def sql(gcp_client):
    return gcp_client("sqladmin", "v1")


def wait(sql, op):
    while op["status"] != "DONE":
        op = sql.operations().get(project=P, operation=op["name"]).execute()
    assert "error" not in op, op
    return op


@pytest.fixture
def instance(sql):
    wait(sql, sql.instances().insert(project=P, body=BODY).execute())
    return sql.instances().get(project=P, instance="mlflow-db").execute()


def test_insert_get_reflects_settings_and_hides_password(instance):
    assert instance["state"] == "RUNNABLE"
    assert instance["connectionName"] == f"{P}:us-central1:mlflow-db"
    s = instance["settings"]
    assert s["backupConfiguration"]["startTime"] == "03:00"
    assert s["backupConfiguration"]["pointInTimeRecoveryEnabled"] is True
    assert s["backupConfiguration"]["backupRetentionSettings"]["retainedBackups"] == 14
    assert s["maintenanceWindow"] == {"kind": "sql#maintenanceWindow", "day": 7, "hour": 4}
    assert s["ipConfiguration"]["sslMode"] == "ENCRYPTED_ONLY"
    assert s["deletionProtectionEnabled"] is True and s["activationPolicy"] == "ALWAYS"
    assert "rootPassword" not in instance and "root-secret" not in json.dumps(instance)


def test_insert_twice_is_409(sql, instance):
    with pytest.raises(HttpError) as info:
        sql.instances().insert(project=P, body=BODY).execute()
    assert info.value.status_code == 409


def test_patch_merges_settings_and_bumps_version(fake_gcp, sql, instance):
    op = sql.instances().patch(project=P, instance="mlflow-db",
                               body={"settings": {"activationPolicy": "NEVER"}}).execute()
    assert op["operationType"] == "UPDATE"
    wait(sql, op)
    got = sql.instances().get(project=P, instance="mlflow-db").execute()
    assert got["settings"]["activationPolicy"] == "NEVER"
    assert got["settings"]["backupConfiguration"]["startTime"] == "03:00"  # kept
    assert int(got["settings"]["settingsVersion"]) == int(instance["settings"]["settingsVersion"]) + 1


def test_operation_in_progress_is_409(sql, instance):
    sql.instances().patch(project=P, instance="mlflow-db", body={"settings": {"tier": "db-g1-small"}}).execute()
    with pytest.raises(HttpError) as info:
        sql.instances().patch(project=P, instance="mlflow-db", body={"settings": {"tier": "db-f1-micro"}}).execute()
    assert info.value.status_code == 409 and b"operationInProgress" in info.value.content


def test_delete_refused_while_protected_then_allowed(fake_gcp, sql, instance):
    with pytest.raises(HttpError) as info:
        sql.instances().delete(project=P, instance="mlflow-db").execute()
    assert info.value.status_code == 400 and b"deletion protection" in info.value.content
    wait(sql, sql.instances().patch(project=P, instance="mlflow-db",
                                    body={"settings": {"deletionProtectionEnabled": False}}).execute())
    fake_gcp.op_polls = 2  # reading the instance counts as one poll of its operation
    op = sql.instances().delete(project=P, instance="mlflow-db").execute()
    assert sql.instances().get(project=P, instance="mlflow-db").execute()["state"] == "PENDING_DELETE"
    wait(sql, op)
    with pytest.raises(HttpError) as info:
        sql.instances().get(project=P, instance="mlflow-db").execute()
    assert info.value.status_code == 404
    assert sql.instances().list(project=P).execute().get("items") is None


def test_databases_and_users(fake_gcp, sql, instance):
    wait(sql, sql.databases().insert(project=P, instance="mlflow-db", body={"name": "mlflow"}).execute())
    names = [d["name"] for d in sql.databases().list(project=P, instance="mlflow-db").execute()["items"]]
    assert names == ["mlflow", "postgres"]
    assert sql.databases().get(project=P, instance="mlflow-db", database="mlflow").execute()["charset"] == "UTF8"
    with pytest.raises(HttpError) as info:
        sql.databases().insert(project=P, instance="mlflow-db", body={"name": "mlflow"}).execute()
    assert info.value.status_code == 400

    wait(sql, sql.users().insert(project=P, instance="mlflow-db",
                                 body={"name": "mlflow", "password": "pw-1"}).execute())
    users = sql.users().list(project=P, instance="mlflow-db").execute()["items"]
    assert {u["name"] for u in users} == {"mlflow", "postgres"}
    assert all("password" not in u for u in users)
    wait(sql, sql.users().update(project=P, instance="mlflow-db", name="mlflow",
                                 body={"name": "mlflow", "password": "pw-2"}).execute())
    assert fake_gcp.api("sqladmin").password_of(P, "mlflow-db", "mlflow") == "pw-2"
    wait(sql, sql.users().delete(project=P, instance="mlflow-db", name="mlflow").execute())
    wait(sql, sql.databases().delete(project=P, instance="mlflow-db", database="mlflow").execute())
    assert [d["name"] for d in sql.databases().list(project=P, instance="mlflow-db").execute()["items"]] == ["postgres"]


def test_backup_runs_and_restore(sql, instance):
    op = sql.backupRuns().insert(project=P, instance="mlflow-db", body={"description": "final"}).execute()
    run_id = op["backupContext"]["backupId"]
    wait(sql, op)
    runs = sql.backupRuns().list(project=P, instance="mlflow-db").execute()["items"]
    assert [(r["id"], r["status"], r["type"]) for r in runs] == [(run_id, "SUCCESSFUL", "ON_DEMAND")]
    assert sql.backupRuns().get(project=P, instance="mlflow-db", id=run_id).execute()["description"] == "final"
    op = sql.instances().restoreBackup(project=P, instance="mlflow-db", body={
        "restoreBackupContext": {"backupRunId": run_id, "instanceId": "mlflow-db", "project": P}}).execute()
    assert op["operationType"] == "RESTORE_VOLUME"
    wait(sql, op)
    with pytest.raises(HttpError) as info:
        sql.instances().restoreBackup(project=P, instance="mlflow-db", body={
            "restoreBackupContext": {"backupRunId": "1", "instanceId": "mlflow-db"}}).execute()
    assert info.value.status_code == 404
    wait(sql, sql.backupRuns().delete(project=P, instance="mlflow-db", id=run_id).execute())
    assert sql.backupRuns().list(project=P, instance="mlflow-db").execute()["items"] == []


def test_failed_operation_reports_error(fake_gcp, sql):
    fake_gcp.fail_next_operation("sqladmin", message="Internal error creating instance")
    op = sql.instances().insert(project=P, body={**BODY, "name": "bad-db"}).execute()
    op = sql.operations().get(project=P, operation=op["name"]).execute()
    assert op["status"] == "DONE" and op["error"]["errors"][0]["message"] == "Internal error creating instance"
    assert sql.instances().get(project=P, instance="bad-db").execute()["state"] == "FAILED"


def test_v1beta4_paths_share_state(gcp_client, instance):
    beta = gcp_client("sqladmin", "v1beta4")
    got = beta.instances().get(project=P, instance="mlflow-db").execute()
    assert got["connectionName"] == instance["connectionName"]


def test_final_backup_outlives_the_instance(fake_gcp, gcp_client, sql, instance):
    wait(sql, sql.instances().patch(project=P, instance="mlflow-db",
                                    body={"settings": {"deletionProtectionEnabled": False}}).execute())
    wait(sql, sql.instances().delete(project=P, instance="mlflow-db", enableFinalBackup=True,
                                     finalBackupTtlDays="30", finalBackupDescription="destroy").execute())
    backups = sql.Backups().ListBackups(parent=f"projects/{P}").execute()["backups"]
    assert [(b["instance"], b["type"], b["ttlDays"], b["description"]) for b in backups] == [
        ("mlflow-db", "FINAL", "30", "destroy")]
    beta = gcp_client("sqladmin", "v1beta4")
    assert beta.backups().getBackup(name=backups[0]["name"]).execute()["state"] == "SUCCESSFUL"
    wait(sql, sql.Backups().DeleteBackup(name=backups[0]["name"]).execute())
    assert sql.Backups().ListBackups(parent=f"projects/{P}").execute() == {}


@pytest.mark.parametrize("settings, needle", [
    ({"tier": "db-tiny"}, b"Invalid Tier"),
    ({"tier": "db-f1-micro", "backupConfiguration": {"enabled": False, "pointInTimeRecoveryEnabled": True}},
     b"point-in-time"),
    ({"tier": "db-f1-micro", "backupConfiguration": {"enabled": True, "binaryLogEnabled": True}}, b"MySQL"),
    ({"tier": "db-f1-micro", "backupConfiguration": {"enabled": True, "startTime": "3am"}}, b"HH:MM"),
    ({"tier": "db-f1-micro", "maintenanceWindow": {"day": 9, "hour": 4}}, b"maintenance window"),
])
def test_settings_cloud_sql_refuses(sql, settings, needle):
    with pytest.raises(HttpError) as info:
        sql.instances().insert(project=P, body={**BODY, "name": "bad", "settings": settings}).execute()
    assert info.value.status_code == 400 and needle in info.value.content


def test_patch_is_validated_after_merge(sql, instance):
    with pytest.raises(HttpError) as info:
        sql.instances().patch(project=P, instance="mlflow-db", body={"settings": {
            "backupConfiguration": {"enabled": False}}}).execute()  # PITR is still on
    assert info.value.status_code == 400


def test_deleted_instance_name_stays_reserved(fake_gcp, sql):
    body = {**BODY, "name": "short-lived", "settings": {"tier": "db-f1-micro"}}
    wait(sql, sql.instances().insert(project=P, body=body).execute())
    wait(sql, sql.instances().delete(project=P, instance="short-lived").execute())
    with pytest.raises(HttpError) as info:
        sql.instances().insert(project=P, body=body).execute()
    assert info.value.status_code == 409 and b"one week" in info.value.content


def _settings(**backup) -> dict:
    body = json.loads(json.dumps(BODY))
    body["databaseVersion"] = "POSTGRES_15"
    body["settings"]["backupConfiguration"].update(backup)
    return body


@pytest.mark.parametrize("backup, edition_tier, message", [
    # Google's texts (Terraform provider and module issues quote them).
    ({"transactionLogRetentionDays": 7, "backupRetentionSettings": {"retainedBackups": 7}}, None,
     "Invalid request: backup retention should be > transaction log retention."),
    ({"transactionLogRetentionDays": 14, "backupRetentionSettings": {"retainedBackups": 15}}, None,
     "Invalid request: The number of transaction log retention days must be between 1 and 7."),
    ({"transactionLogRetentionDays": 36, "backupRetentionSettings": {"retainedBackups": 40}},
     ("ENTERPRISE_PLUS", "db-perf-optimized-N-2"),
     "Invalid request: The number of transaction log retention days must be between 1 and 35."),
    ({"backupRetentionSettings": {"retainedBackups": 366}}, None,
     "Invalid request: The number of retained backups must be between 1 and 365."),
    ({}, ("ENTERPRISE_PLUS", "db-f1-micro"),
     "Invalid request: Invalid Tier (db-f1-micro) for (ENTERPRISE_PLUS) Edition. Use sql tiers list to see "
     "the list of valid tiers."),
    ({}, ("ENTERPRISE", "db-perf-optimized-N-2"),
     "Invalid request: Invalid Tier (db-perf-optimized-N-2) for (ENTERPRISE) Edition. Use sql tiers list to "
     "see the list of valid tiers."),
])
def test_cloud_sql_refuses_what_each_edition_refuses(sql, fake_gcp, backup, edition_tier, message):
    body = _settings(**backup)
    if edition_tier:
        body["settings"]["edition"], body["settings"]["tier"] = edition_tier
    with pytest.raises(HttpError) as info:
        sql.instances().insert(project=P, body=body).execute()
    assert info.value.status_code == 400
    assert json.loads(info.value.content)["error"]["message"] == message
    assert fake_gcp.state("sqladmin") == {}


def test_enterprise_plus_keeps_up_to_35_days_and_a_patch_is_checked_too(sql):
    body = _settings(transactionLogRetentionDays=35, backupRetentionSettings={"retainedBackups": 36})
    body["settings"].update(edition="ENTERPRISE_PLUS", tier="db-perf-optimized-N-2")
    wait(sql, sql.instances().insert(project=P, body=body).execute())
    with pytest.raises(HttpError) as info:
        sql.instances().patch(project=P, instance="mlflow-db", body={"settings": {
            "backupConfiguration": {"backupRetentionSettings": {"retainedBackups": 35}}}}).execute()
    assert "backup retention should be > transaction log retention" in str(info.value)
