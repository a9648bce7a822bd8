"""Cloud SQL's rules by edition (issue 14, item 5), refused in the config field by field before
any API call, with Google's limits: ENTERPRISE keeps 1-7 days of transaction logs and ENTERPRISE_PLUS
1-35; retained backups (1-365) must exceed the days of logs; ENTERPRISE has the shared-core and
db-custom tiers, ENTERPRISE_PLUS only db-perf-optimized-N-<vCPUs>."""

from __future__ import annotations

import pytest

from mlflow_gcp import budget, config
from mlflow_gcp.errors import ConfigError
from mlflow_gcp.ops import cost


def load(**database) -> config.Config:
    return config.from_dict({"project": "acme-ml-prod", "database": database})


def refusal(**database) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load(**database)
    return dict(err.value.problems)


def test_the_defaults_keep_more_backups_than_days_of_logs():
    db = load().database
    assert (db.edition, db.log_retention_days, db.backup_retention) == ("ENTERPRISE", 7, 8)


def test_enterprise_keeps_at_most_7_days_of_logs():
    assert refusal(log_retention_days=14, backup_retention=15) == {
        "database.log_retention_days":
            'the ENTERPRISE edition keeps 1-7 days of transaction logs (35 needs database.edition = "ENTERPRISE_PLUS")'}
    assert "less than or equal to 35" in refusal(log_retention_days=36, edition="ENTERPRISE_PLUS",
                                                 tier="db-perf-optimized-N-2")["database.log_retention_days"]


def test_retained_backups_must_exceed_the_days_of_logs():
    assert refusal(backup_retention=7) == {
        "database.log_retention_days":
            "7 days of transaction logs need more retained backups than that (Cloud SQL: backup retention "
            "must exceed log retention): set database.backup_retention to 8 or more, or lower log_retention_days"}
    assert load(backup_retention=7, log_retention_days=6).database.backup_retention == 7
    # Without point-in-time recovery no logs are kept, so nothing to exceed.
    assert load(backup_retention=3, point_in_time_recovery=False).database.backup_retention == 3
    assert "less than or equal to 365" in refusal(backup_retention=366)["database.backup_retention"]


def test_tiers_belong_to_one_edition():
    for tier in ("db-f1-micro", "db-g1-small", "db-custom-2-7680"):
        assert refusal(tier=tier, edition="ENTERPRISE_PLUS") == {
            "database.edition": f"ENTERPRISE_PLUS has only db-perf-optimized-N-<vCPUs> tiers: database.tier {tier} "
                                "needs edition ENTERPRISE"}
    assert refusal(tier="db-perf-optimized-N-4") == {
        "database.edition": "ENTERPRISE has no db-perf-optimized tiers (they are ENTERPRISE_PLUS only): "
                            "database.tier db-perf-optimized-N-4 needs edition ENTERPRISE_PLUS"}
    assert "Enterprise Plus machines have 2, 4, 8" in refusal(tier="db-perf-optimized-N-3", edition="ENTERPRISE_PLUS")[
        "database.tier"]


def test_enterprise_plus_takes_35_days_on_its_own_machines_and_is_sized_and_priced():
    cfg = load(tier="db-perf-optimized-N-2", edition="ENTERPRISE_PLUS", log_retention_days=35, backup_retention=36)
    assert cfg.database.max_connections == 500  # 16 GB of memory: the 15-30 GB step
    assert budget.tier_shape("db-perf-optimized-N-128") == (128, 864 * 1024)
    line = next(x for x in cost.estimate(cfg).lines if x.component == "Cloud SQL instance")
    assert line.monthly_usd == pytest.approx((2 * 0.0537 + 16 * 0.0091) * 730, abs=0.01)
