"""Desired bodies: every field exists in Google's discovery documents, and the product's rules
(private, no secret in the clear, nothing deleted that a model may need) hold in the data."""

from __future__ import annotations

import json
from pathlib import Path

import googleapiclient
import pytest

from mlflow_gcp import config
from mlflow_gcp.plan import desired

DOCS = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"


def cfg(**sections) -> config.Config:
    return config.from_dict({"project": "acme-ml-prod", **sections})


def _unknown_fields(doc: dict, schema: dict, value, path="") -> list[str]:
    if "$ref" in schema:
        schema = doc["schemas"][schema["$ref"]]
    if isinstance(value, dict):
        if "additionalProperties" in schema:
            return [p for k, v in value.items() for p in _unknown_fields(doc, schema["additionalProperties"], v, f"{path}.{k}")]
        props = schema.get("properties", {})
        out = []
        for k, v in value.items():
            if k not in props:
                out.append(f"{path}.{k}")
            else:
                out += _unknown_fields(doc, props[k], v, f"{path}.{k}")
        return out
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _unknown_fields(doc, schema.get("items", {}), v, f"{path}[{i}]")]
    return []


def check(api: str, schema: str, body: dict) -> list[str]:
    doc = json.loads((DOCS / f"{api}.json").read_text())
    return _unknown_fields(doc, {"$ref": schema}, body)


@pytest.mark.parametrize("settings", [{}, {"database": {"private_ip": True, "network": "projects/p/global/networks/default"}}])
def test_every_body_uses_only_documented_fields(settings):
    c = cfg(**settings)
    assert check("sqladmin.v1", "DatabaseInstance", desired.sql_instance(c)) == []
    assert check("storage.v1", "Bucket", desired.bucket(c)) == []
    assert check("run.v2", "GoogleCloudRunV2Service", desired.service(c, c.image_uri, ["h"])) == []
    assert check("run.v2", "GoogleCloudRunV2Job", desired.job(c, c.image_uri)) == []
    assert check("secretmanager.v1", "Secret", desired.secret(c)) == []
    assert check("artifactregistry.v1", "Repository", desired.repository(c)) == []
    assert check("iam.v1", "ServiceAccount", desired.service_account(c)) == []
    assert check("iam.v1", "ServiceAccount", desired.builder_service_account(c)) == []
    assert check("cloudbuild.v1", "Build", desired.build(c, "b", "o.tar.gz")) == []


def test_the_checker_catches_a_misspelled_field():
    assert check("storage.v1", "Bucket", {"lifecycle": {"rules": []}}) == [".lifecycle.rules"]


def test_cloud_sql_defaults_are_durable_and_closed():
    body = desired.sql_instance(cfg())
    s = body["settings"]
    assert s["backupConfiguration"]["enabled"] and s["backupConfiguration"]["pointInTimeRecoveryEnabled"]
    assert s["deletionProtectionEnabled"] is True
    assert s["ipConfiguration"]["authorizedNetworks"] == [] and s["ipConfiguration"]["sslMode"] == "ENCRYPTED_ONLY"
    private = desired.sql_instance(cfg(database={"private_ip": True, "network": "projects/p/global/networks/vpc"}))
    assert private["settings"]["ipConfiguration"]["ipv4Enabled"] is False
    assert private["settings"]["ipConfiguration"]["privateNetwork"] == "projects/p/global/networks/vpc"


def test_lifecycle_archives_by_default_and_deletes_only_under_a_prefix():
    rules = desired.lifecycle_rules(cfg())
    assert rules[0] == {"action": {"type": "SetStorageClass", "storageClass": "NEARLINE"},
                        "condition": {"age": 90, "matchesStorageClass": ["STANDARD"]}}
    scratch = desired.lifecycle_rules(cfg(artifacts={"lifecycle": {"action": "delete", "days": 30, "prefix": "scratch/"}}))
    assert scratch[0] == {"action": {"type": "Delete"}, "condition": {"age": 30, "matchesPrefix": ["scratch/"]}}
    for rules in (desired.lifecycle_rules(cfg()), scratch):
        assert all(r["condition"].get("matchesPrefix") for r in rules if r["action"]["type"] == "Delete")


def test_the_cleanup_policy_deletes_only_old_versions_of_our_package_beyond_the_kept_ones():
    policies = desired.repository(cfg(service={"images_kept": 3}))["cleanupPolicies"]
    by_action = {p["action"]: p for p in policies.values()}
    assert set(by_action) == {"DELETE", "KEEP"} and all(policies[k]["id"] == k for k in policies)
    # Google keeps a version that matches both a DELETE and a KEEP policy.
    assert by_action["KEEP"]["mostRecentVersions"] == {"packageNamePrefixes": ["mlflow-gcp"], "keepCount": 3}
    assert by_action["DELETE"]["condition"] == {
        "tagState": "ANY", "olderThan": "604800s", "packageNamePrefixes": ["mlflow-gcp"]}
    assert desired.repository(cfg())["cleanupPolicyDryRun"] is False


def test_the_password_is_only_a_secret_reference():
    c = cfg()
    for body in (desired.service(c, "img", []), desired.job(c, "img")):
        containers = body["template"]["containers"] if "containers" in body["template"] else body["template"]["template"]["containers"]
        env = {e["name"]: e for e in containers[0]["env"]}
        assert "value" not in env["DB_PASSWORD"]
        assert env["DB_PASSWORD"]["valueSource"]["secretKeyRef"] == {
            "secret": "mlflow-tracking-db-password", "version": "latest"}


def test_service_env_matches_the_server_contract():
    c = cfg(service={"max_instances": 4, "workers": 2})
    env = {e["name"]: e.get("value") for e in desired.service(c, "img", ["a.run.app", "b.run.app"])["template"]["containers"][0]["env"]}
    assert env["ALLOWED_HOSTS"] == "a.run.app,b.run.app"
    assert env["DB_MIGRATE"] == "never" and env["WORKERS"] == "2"
    assert env["DB_CONNECTIONS"] == str(c.connections_per_instance())
    assert env["ARTIFACT_ROOT"] == "gs://acme-ml-prod-mlflow-artifacts" and env["ARTIFACT_MODE"] == "proxied"


def test_allowed_hosts_include_the_deterministic_host_before_the_first_deploy():
    c = cfg()
    assert desired.allowed_hosts(c, "123456", []) == ["mlflow-tracking-123456.europe-west9.run.app"]
    assert desired.allowed_hosts(c, "123456", ["https://mlflow-tracking-abc-ew.a.run.app"]) == [
        "mlflow-tracking-123456.europe-west9.run.app", "mlflow-tracking-abc-ew.a.run.app"]


def test_private_by_default_public_only_when_configured():
    want, remove = desired.invoker_bindings(cfg(access={"members": ["user:ann@example.com"]}))
    assert want == [("roles/run.invoker", "user:ann@example.com")]
    assert ("roles/run.invoker", "allUsers") in remove and ("roles/run.invoker", "allAuthenticatedUsers") in remove
    assert desired.service(cfg(), "img", [])["invokerIamDisabled"] is False
    # Public is the service's invoker check off, never an allUsers binding (which domain-restricted
    # sharing refuses); one left by an earlier version goes.
    public = cfg(access={"mode": "public"})
    want, remove = desired.invoker_bindings(public)
    assert want == [] and ("roles/run.invoker", "allUsers") in remove
    assert desired.service(public, "img", [])["invokerIamDisabled"] is True


def test_server_account_is_least_privilege():
    c = cfg()
    member = "serviceAccount:mlflow-server@acme-ml-prod.iam.gserviceaccount.com"
    assert desired.project_bindings(c) == [("roles/cloudsql.client", member)]
    assert desired.bucket_bindings(c) == [("roles/storage.objectUser", member)]
    assert desired.secret_bindings(c) == [("roles/secretmanager.secretAccessor", member)]
    assert desired.sa_self_bindings(c) == [("roles/iam.serviceAccountTokenCreator", member)]


def test_private_ip_gives_the_service_and_job_a_way_into_the_vpc():
    c = cfg(database={"private_ip": True, "network": "projects/p/global/networks/vpc"})
    for template in (desired.service(c, "img", [])["template"], desired.job(c, "img")["template"]["template"]):
        assert template["vpcAccess"] == {"networkInterfaces": [{"network": "projects/p/global/networks/vpc"}],
                                         "egress": "PRIVATE_RANGES_ONLY"}
    assert "vpcAccess" not in desired.service(cfg(), "img", [])["template"]


def _container_env(container: dict, password: str) -> dict[str, str]:
    """The environment Cloud Run gives the container: values, and secret references resolved."""
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update({e["name"]: password for e in container["env"] if "valueSource" in e})
    return {**env, "PORT": str(container.get("ports", [{"containerPort": 8080}])[0]["containerPort"])}


def test_the_service_verifies_identities_and_permissions_reach_service_and_job():
    from mlflow_gcp.server import identity, permissions

    host = "mlflow-tracking-123456.europe-west9.run.app"
    plain = _container_env(desired.service(cfg(), "img", [host])["template"]["containers"][0], "pw")
    assert identity.from_env(plain).verifier.audiences == {f"https://{host}", identity.GCLOUD_CLIENT_ID}
    assert not permissions.enabled(plain)
    for off in (cfg(access={"verify_identity": False}), cfg(access={"mode": "public"})):
        assert identity.from_env(_container_env(desired.service(off, "img", [host])["template"]["containers"][0], "pw")) is None

    c = cfg(access={"permissions": True, "admins": ["user:Ann@Example.com"], "default_permission": "EDIT"})
    for container in (desired.service(c, "img", [host])["template"]["containers"][0],
                      desired.job(c, "img")["template"]["template"]["containers"][0]):
        env = _container_env(container, "pw")
        assert permissions.enabled(env) and permissions.admins(env) == ["ann@example.com"]
        assert permissions.default_permission(env) == "EDIT"


def test_permissions_need_verified_identities_and_admins_are_identities():
    with pytest.raises(config.ConfigError, match="needs verify_identity"):
        cfg(access={"permissions": True, "verify_identity": False})
    with pytest.raises(config.ConfigError, match="needs a private server"):
        cfg(access={"permissions": True, "mode": "public"})
    with pytest.raises(config.ConfigError, match="not an identity"):
        cfg(access={"admins": ["group:ml@example.com"]})


def test_the_gateway_is_off_unless_asked_and_then_gets_its_passphrase_by_reference():
    off = {e["name"]: e for e in desired.service(cfg(), "img", [])["template"]["containers"][0]["env"]}
    assert "GATEWAY" not in off and "MLFLOW_CRYPTO_KEK_PASSPHRASE" not in off
    assert desired.gateway_secret_bindings(cfg()) == []
    c = cfg(service={"gateway": True})
    on = {e["name"]: e for e in desired.service(c, "img", [])["template"]["containers"][0]["env"]}
    assert on["GATEWAY"]["value"] == "on"
    assert on["MLFLOW_CRYPTO_KEK_PASSPHRASE"] == {"name": "MLFLOW_CRYPTO_KEK_PASSPHRASE", "valueSource": {
        "secretKeyRef": {"secret": "mlflow-tracking-gateway-passphrase", "version": "latest"}}}
    assert desired.gateway_secret_bindings(c) == desired.secret_bindings(c)
    assert check("run.v2", "GoogleCloudRunV2Service", desired.service(c, c.image_uri, ["h"])) == []


@pytest.mark.parametrize("settings", [{}, {"service": {"max_instances": 2, "workers": 3}, "artifacts": {"mode": "direct"}},
                                      {"access": {"permissions": True}, "service": {"max_instances": 2}},
                                      {"service": {"gateway": True}}])
def test_the_server_accepts_the_environment_we_deploy(settings):
    from mlflow_gcp.server import permissions
    from mlflow_gcp.server.env import settings_from_env

    c = cfg(**settings)
    host = desired.run_app_host(c, "123456")
    served = settings_from_env(_container_env(desired.service(c, "img", [host])["template"]["containers"][0], "pw"))
    assert served.allowed_hosts == (host,) and served.migrate == "never"
    assert served.workers == c.service.workers and served.artifact_mode == c.artifacts.mode
    assert "/cloudsql/" + c.instance_connection_name in served.db_uri
    auth_pool = permissions.AUTH_POOL_CONNECTIONS if c.access.permissions else 0
    assert (served.pool.per_engine + auth_pool) * c.service.workers <= c.connections_per_instance()
    assert served.gateway is c.service.gateway
    job = desired.job(c, "img")["template"]["template"]["containers"][0]
    migrating = settings_from_env(_container_env(job, "pw"), serving=False)
    assert migrating.db_uri == served.db_uri


def test_the_build_source_is_reproducible(tmp_path):
    import os

    from mlflow_gcp import image_source as image

    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    (tmp_path / "src" / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "src" / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    first = image.source_tarball(tmp_path)
    os.utime(tmp_path / "Dockerfile", (1, 1))  # touching files changes nothing
    assert image.source_tarball(tmp_path) == first
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("x = 1\n")
    assert image.source_tarball(tmp_path) != first
