"""`plan` and `up` with Cloud SQL's rules by edition (issue 14, item 5): a setting Google would
refuse stops at the config, before any call, naming the field; the defaults pass the fake, which
refuses what Cloud SQL refuses."""

from __future__ import annotations

import pytest

from mlflow_gcp.cli import main as cli_main

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server  # noqa: F401
from tests.integration.ops_support import INSTANCE_KEY, PROJECT, run_cli, workdir  # noqa: F401


@pytest.mark.parametrize("setting, line", [
    ("database.log_retention_days=14",
     'Error: database.log_retention_days: the ENTERPRISE edition keeps 1-7 days of transaction logs '
     '(35 needs database.edition = "ENTERPRISE_PLUS")'),
    ("database.backup_retention=5",
     "Error: database.log_retention_days: 7 days of transaction logs need more retained backups than that "
     "(Cloud SQL: backup retention must exceed log retention): set database.backup_retention to 8 or more, "
     "or lower log_retention_days"),
    ("database.edition=ENTERPRISE_PLUS",
     "Error: database.edition: ENTERPRISE_PLUS has only db-perf-optimized-N-<vCPUs> tiers: database.tier "
     "db-f1-micro needs edition ENTERPRISE"),
])
def test_settings_cloud_sql_refuses_stop_before_any_call(workdir, fake_gcp, capsys, setting, line):
    code, out, err = run_cli(capsys, "plan", "--project", PROJECT, "--set", setting)
    assert code == 2
    assert err.strip() == line
    assert fake_gcp.requests == []


def test_the_default_database_passes_cloud_sql_s_rules(workdir, fake_gcp, capsys):
    code, out, err = run_cli(capsys, "up", "--yes", "--project", PROJECT)
    assert code == 0, err
    backup = fake_gcp.state("sqladmin")[INSTANCE_KEY]["settings"]["backupConfiguration"]
    assert backup["pointInTimeRecoveryEnabled"] is True
    assert (backup["transactionLogRetentionDays"], backup["backupRetentionSettings"]["retainedBackups"]) == (7, 8)


def test_enterprise_plus_with_its_own_machine_and_35_days(workdir, fake_gcp, capsys):
    code, out, err = run_cli(capsys, "up", "--yes", "--project", PROJECT,
                             "--set", "database.edition=ENTERPRISE_PLUS", "--set", "database.tier=db-perf-optimized-N-2",
                             "--set", "database.log_retention_days=35", "--set", "database.backup_retention=36")
    assert code == 0, err
    settings = fake_gcp.state("sqladmin")[INSTANCE_KEY]["settings"]
    assert (settings["edition"], settings["tier"]) == ("ENTERPRISE_PLUS", "db-perf-optimized-N-2")
    assert settings["backupConfiguration"]["transactionLogRetentionDays"] == 35
