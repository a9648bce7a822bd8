"""The monthly cost estimate: arithmetic from the dated price table, and honest assumptions."""

from mlflow_gcp import config
from mlflow_gcp.ops import cost


def cfg(**sections):
    return config.from_dict({"project": "acme-ml-prod", **sections})


def test_default_deployment_costs_the_small_instance_and_nothing_idle():
    est = cost.estimate(cfg(region="us-central1"))
    lines = {line.component: line.monthly_usd for line in est.lines}
    assert lines["Cloud SQL instance"] == cost.SQL_SHARED_CORE_HOURLY["db-f1-micro"] * cost.HOURS_PER_MONTH
    assert lines["Cloud Run idle instances"] == 0
    assert est.total == round(sum(lines.values()), 2)
    assert not any("priced as" in a for a in est.assumptions)


def test_warm_instances_and_custom_tiers_add_up():
    est = cost.estimate(cfg(service={"min_instances": 1, "cpu": "2", "memory": "2Gi"},
                            database={"tier": "db-custom-2-7680"}))
    lines = {line.component: line.monthly_usd for line in est.lines}
    assert lines["Cloud Run idle instances"] == cost.SECONDS_PER_MONTH * (2 + 2) * cost.RUN_IDLE_VCPU_SECOND
    expected_sql = (2 * cost.SQL_VCPU_HOURLY["ENTERPRISE"] + 7.5 * cost.SQL_GB_RAM_HOURLY["ENTERPRISE"]) * cost.HOURS_PER_MONTH
    assert abs(lines["Cloud SQL instance"] - expected_sql) < 1e-9


def test_other_regions_say_they_are_priced_as_the_table_region():
    est = cost.estimate(cfg())  # europe-west9
    assert "europe-west9 priced as us-central1" in est.assumptions[0]
    data = est.as_dict()
    assert data["prices_as_of"] == cost.PRICES_AS_OF and data["currency"] == "USD"


def test_registry_storage_counts_every_image_the_cleanup_policy_keeps():
    two = {x.component: x for x in cost.estimate(cfg(service={"images_kept": 2})).lines}["Artifact Registry"]
    ten = {x.component: x for x in cost.estimate(cfg(service={"images_kept": 10})).lines}["Artifact Registry"]
    assert two.monthly_usd == max(0.0, 2 * cost.IMAGE_GB - cost.REGISTRY_FREE_GB) * cost.REGISTRY_GB_MONTH
    assert ten.monthly_usd == (10 * cost.IMAGE_GB - cost.REGISTRY_FREE_GB) * cost.REGISTRY_GB_MONTH
    assert "up to 10 kept images" in ten.basis


def test_the_512mi_default_says_what_it_saves_against_1gi():
    est = cost.estimate(cfg())
    hourly = 0.5 * cost.RUN_ACTIVE_GIB_SECOND * 3600
    assert f"Cloud Run memory 512Mi: ${hourly:.4f} less per instance-hour billed than 1Gi" in " ".join(est.assumptions)
    assert cost.memory_saving("1Gi") is None and cost.memory_saving("2Gi") is None
    warm = {x.component: x for x in cost.estimate(cfg(service={"min_instances": 1})).lines}
    expected = cost.SECONDS_PER_MONTH * (cost.RUN_IDLE_VCPU_SECOND + 0.5 * cost.RUN_IDLE_GIB_SECOND)
    assert abs(warm["Cloud Run idle instances"].monthly_usd - expected) < 1e-9  # a warm instance: half a GiB
