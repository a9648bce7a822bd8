"""`service.gateway`: off, `up` creates nothing for MLflow's AI gateway and the service runs without
it; on, `up` generates the passphrase that encrypts the gateway's provider keys like the database
password (a Secret Manager version only the server's account may read, handed to Cloud Run as a
secret reference), never prints it, and a second `up` changes nothing."""

from __future__ import annotations

import logging

from mlflow_gcp.ops import destroy as destroy_ops

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401
from tests.integration.test_deploy_up import PROJECT, SERVICE, make_cfg, make_ctx, plan, up

SECRET = "mlflow-tracking-gateway-passphrase"


def _env(fake) -> dict[str, dict]:
    return {e["name"]: e for e in fake.state("run")[SERVICE]["template"]["containers"][0]["env"]}


def test_up_leaves_the_gateway_off_by_default(fake_gcp):
    up(make_cfg())
    env = _env(fake_gcp)
    assert "GATEWAY" not in env and "MLFLOW_CRYPTO_KEK_PASSPHRASE" not in env
    assert not fake_gcp.modules["secretmanager"].has_secret(PROJECT, SECRET)


def test_up_with_the_gateway_keeps_its_passphrase_in_secret_manager_only(fake_gcp, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    up(make_cfg())  # an existing deployment turns the gateway on
    lines: list[str] = []
    cfg = make_cfg(service__gateway=True)
    up(cfg, lines=lines)

    manager = fake_gcp.modules["secretmanager"]
    passphrase = manager.payload_of(PROJECT, SECRET).decode()
    assert len(passphrase) >= 43  # 32 random bytes, url-safe base64
    env = _env(fake_gcp)
    assert env["GATEWAY"]["value"] == "on"
    assert env["MLFLOW_CRYPTO_KEK_PASSPHRASE"]["valueSource"]["secretKeyRef"] == {"secret": SECRET, "version": "latest"}
    assert "value" not in env["MLFLOW_CRYPTO_KEK_PASSPHRASE"]
    policy = next(p for key, p in manager.iam.policies.items() if key.endswith(f"/secrets/{SECRET}"))
    assert {"role": "roles/secretmanager.secretAccessor",
            "members": [f"serviceAccount:{cfg.server_service_account_email}"]} in policy["bindings"]
    shown = "\n".join(lines) + capsys.readouterr().out + capsys.readouterr().err + caplog.text
    assert passphrase not in shown and SECRET in shown

    assert plan(cfg).empty
    up(cfg)
    assert manager.payload_of(PROJECT, SECRET).decode() == passphrase  # kept, never regenerated


def test_destroy_removes_the_gateway_secret(fake_gcp):
    cfg = make_cfg(service__gateway=True)
    up(cfg)
    destroy_ops.destroy(make_ctx(cfg), backup=False)
    assert not fake_gcp.modules["secretmanager"].has_secret(PROJECT, SECRET)
