"""The connection budget arithmetic that both plan and the server rely on."""

import pytest

from mlflow_gcp import budget


@pytest.mark.parametrize(
    "tier, conns",
    [("db-f1-micro", 25), ("db-g1-small", 50), ("db-custom-1-3840", 100), ("db-custom-2-7680", 400),
     ("db-custom-4-15360", 500), ("db-custom-16-131072", 1000)],
)
def test_tier_max_connections(tier, conns):
    assert budget.tier_max_connections(tier) == conns


@pytest.mark.parametrize("tier", ["db-n1-standard-1x", "db-custom-1-1024", "micro", ""])
def test_unknown_tiers_are_rejected(tier):
    with pytest.raises(ValueError):
        budget.tier_max_connections(tier)


@pytest.mark.parametrize("tier", ["db-f1-micro", "db-g1-small", "db-custom-2-7680"])
@pytest.mark.parametrize("instances", [1, 2, 5, 10])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_pool_never_exceeds_the_tier(tier, instances, workers):
    try:
        pool = budget.check(tier, instances, workers)
    except ValueError as err:
        assert "max_instances" in str(err) or "tier" in str(err)
        return
    used = instances * workers * budget.ENGINES_PER_WORKER * pool.per_engine
    assert used + budget.RESERVED_CONNECTIONS <= budget.tier_max_connections(tier)
    assert pool.pool_size >= 1 and pool.max_overflow >= 0


def test_refusal_suggests_a_count_that_fits():
    with pytest.raises(ValueError) as excinfo:
        budget.check("db-f1-micro", 50, 1)
    fits = (25 - budget.RESERVED_CONNECTIONS) // (budget.ENGINES_PER_WORKER * budget.MIN_POOL_CONNECTIONS)
    assert f"lower max_instances to {fits}" in str(excinfo.value)
    budget.check("db-f1-micro", fits, 1)


def test_the_permission_store_pool_is_part_of_the_budget():
    from mlflow_gcp import config
    from mlflow_gcp.errors import BudgetError

    # db-f1-micro: 20 usable connections; 10 instances x (2 pool + 2 permission store) do not fit.
    with pytest.raises(BudgetError, match="lower max_instances to 5"):
        config.from_dict({"project": "acme-ml-prod", "access": {"permissions": True}}).pool()
    fits = config.from_dict({"project": "acme-ml-prod", "access": {"permissions": True},
                             "service": {"max_instances": 2}})
    # 10 per instance: 2 for the permission store, the pool gets the other 8.
    assert fits.connections_per_instance() == 10 and fits.pool().per_engine == 8
