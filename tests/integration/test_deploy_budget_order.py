"""A database tier change and the service's connection budget, in the order Google sees the
writes: the service never holds a larger share than the instance allows (plan/steps_budget.py)."""

from __future__ import annotations

import pytest

from mlflow_gcp import budget
from mlflow_gcp.errors import Unavailable

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401
from tests.integration.test_deploy_up import SERVICE, let_google_finish, make_cfg, plan, up

SMALL, LARGE = "db-f1-micro", "db-g1-small"  # 25 and 50 connections
SQL_PATCH, RUN_PATCH = "sql.instances.patch", "run.projects.locations.services.patch"


def writes(fake) -> list[str]:
    return [r.method_id for r in fake.mutating_requests() if r.method_id in (SQL_PATCH, RUN_PATCH)]


def served_budget(fake) -> tuple[int, int]:
    tpl = fake.state("run")[SERVICE]["template"]
    env = {e["name"]: e.get("value") for e in tpl["containers"][0]["env"]}
    return tpl["scaling"]["maxInstanceCount"], int(env["DB_CONNECTIONS"])


def tier_now(fake) -> str:
    return fake.state("sqladmin")["acme-ml-prod/mlflow-db"]["settings"]["tier"]


def fits(fake) -> bool:
    instances, share = served_budget(fake)
    return instances * share + budget.RESERVED_CONNECTIONS <= budget.tier_max_connections(tier_now(fake))


def test_a_larger_tier_grows_the_instance_then_the_service(fake_gcp):
    up(make_cfg(database__tier=SMALL))
    assert served_budget(fake_gcp) == (10, 2)
    fake_gcp.clear_log()
    up(make_cfg(database__tier=LARGE))
    assert writes(fake_gcp) == [SQL_PATCH, RUN_PATCH]
    assert served_budget(fake_gcp) == (10, 4) and tier_now(fake_gcp) == LARGE


def test_a_smaller_tier_shrinks_the_service_then_the_instance(fake_gcp):
    up(make_cfg(database__tier=LARGE))
    assert served_budget(fake_gcp) == (10, 4)
    smaller = make_cfg(database__tier=SMALL)
    p = plan(smaller)
    first = next(a for a in p.changes if a.key == "service_budget")
    assert p.changes.index(first) < next(i for i, a in enumerate(p.changes) if a.kind == "Cloud SQL instance")
    assert [str(c) for c in first.changes] == [
        "template.containers[mlflow].env[DB_CONNECTIONS].value (connection budget per instance): 4 -> 2"]
    assert "before the database shrinks to db-f1-micro (25 connections)" in first.summary()
    assert not any(a.key == "service" for a in p.changes), "shown once, where it happens"
    image = fake_gcp.state("run")[SERVICE]["template"]["containers"][0]["image"]
    fake_gcp.clear_log()
    up(smaller)
    assert writes(fake_gcp) == [RUN_PATCH, SQL_PATCH], "nothing left for the service step"
    assert served_budget(fake_gcp) == (10, 2) and tier_now(fake_gcp) == SMALL
    assert fake_gcp.state("run")[SERVICE]["template"]["containers"][0]["image"] == image
    fake_gcp.clear_log()
    assert plan(smaller).empty and fake_gcp.mutating_requests() == []


def test_a_smaller_tier_with_fewer_instances_sets_both_first(fake_gcp):
    up(make_cfg(database__tier=LARGE, service__min_instances=3))
    smaller = make_cfg(database__tier=SMALL, service__max_instances=2, service__min_instances=1)
    first = next(a for a in plan(smaller).changes if a.key == "service_budget")
    assert [str(c) for c in first.changes] == [
        "template.containers[mlflow].env[DB_CONNECTIONS].value (connection budget per instance): 4 -> 10",
        "template.scaling.maxInstanceCount (service.max_instances): 10 -> 2",
        "template.scaling.minInstanceCount (service.min_instances): 3 -> 1",
    ]
    fake_gcp.clear_log()
    up(smaller)
    assert writes(fake_gcp) == [RUN_PATCH, SQL_PATCH]
    assert served_budget(fake_gcp) == (2, 10) and tier_now(fake_gcp) == SMALL
    assert fake_gcp.state("run")[SERVICE]["template"]["scaling"]["minInstanceCount"] == 1


@pytest.mark.parametrize("after_apply", [False, True], ids=["call-refused", "response-lost"])
def test_a_downgrade_interrupted_anywhere_converges_and_never_overcommits(fake_gcp, after_apply):
    for n in (1, 2):
        fake_gcp.reset()
        up(make_cfg(database__tier=LARGE))
        fake_gcp.fail_mutation(n, status=500, after_apply=after_apply)
        with pytest.raises(Unavailable):
            up(make_cfg(database__tier=SMALL))
        fake_gcp.clear_faults()
        let_google_finish(fake_gcp)
        assert fits(fake_gcp), f"fault at call {n}: the service may open more than the instance allows"
        up(make_cfg(database__tier=SMALL))
        assert served_budget(fake_gcp) == (10, 2) and tier_now(fake_gcp) == SMALL
        fake_gcp.clear_log()
        assert plan(make_cfg(database__tier=SMALL)).empty and fake_gcp.mutating_requests() == []
