"""`up` and the service's invokers against the fake: members removed from access.members are
revoked, members granted with `mlflow-gcp access grant` are not, and an interrupted `up` converges
(plan/invokers.py)."""

from __future__ import annotations

import pytest

from mlflow_gcp.errors import Unavailable
from mlflow_gcp.gcp import iampolicy
from mlflow_gcp.ops import access
from mlflow_gcp.plan import invokers

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401
from tests.integration.test_deploy_up import SERVICE, let_google_finish, make_cfg, make_ctx, plan, up

ANN, BOB, CAROL = "user:ann@example.com", "user:bob@example.com", "group:carol@example.com"
ROLE = "roles/run.invoker"


def cfg_with(*members):
    return make_cfg(access__members=list(members))


def invokers_now(fake) -> set[str]:
    return iampolicy.members_of(fake.modules["run"].iam.get(SERVICE), ROLE)


def record_now(fake) -> list[str]:
    return invokers.recorded(fake.state("run")[SERVICE])


def assert_converged(fake, cfg) -> None:
    fake.clear_log()
    assert plan(cfg).empty
    assert fake.mutating_requests() == []


def test_a_member_removed_from_the_config_is_revoked_and_plan_says_so(fake_gcp):
    up(cfg_with(ANN, BOB))
    assert invokers_now(fake_gcp) == {ANN, BOB} and record_now(fake_gcp) == [ANN, BOB]
    fewer = cfg_with(ANN)
    p = plan(fewer)
    [action] = p.changes
    assert action.key == "invokers" and action.verb == "delete"
    assert [(c.path, c.old, c.new) for c in action.changes] == [(ROLE, BOB, None)]
    assert action.detail == f"remove {ROLE} from {BOB} (no longer in access.members)"
    revisions = set(fake_gcp.modules["run"].revisions)
    fake_gcp.clear_log()
    up(fewer)
    assert invokers_now(fake_gcp) == {ANN} and record_now(fake_gcp) == [ANN]
    writes = [r.method_id for r in fake_gcp.mutating_requests()]
    # One policy write, one record write; the record write rolls out no revision.
    assert writes == ["run.projects.locations.services.setIamPolicy", "run.projects.locations.services.patch"]
    assert set(fake_gcp.modules["run"].revisions) == revisions
    assert_converged(fake_gcp, fewer)


def test_members_granted_with_access_grant_survive_up(fake_gcp):
    cfg = cfg_with(ANN)
    up(cfg)
    access.grant(make_ctx(cfg).clients, cfg, [CAROL])
    up(cfg_with(ANN, BOB))
    up(cfg)  # BOB goes, CAROL stays
    assert invokers_now(fake_gcp) == {ANN, CAROL}
    assert_converged(fake_gcp, cfg)


def test_a_member_moved_from_the_config_to_access_grant_is_kept(fake_gcp):
    up(cfg_with(ANN, BOB))
    fewer = cfg_with(ANN)
    access.grant(make_ctx(fewer).clients, fewer, [BOB])
    assert record_now(fake_gcp) == [ANN], "granted by hand from now on"
    up(fewer)
    assert invokers_now(fake_gcp) == {ANN, BOB}
    assert_converged(fake_gcp, fewer)


def test_the_record_survives_a_service_update(fake_gcp):
    up(cfg_with(ANN, BOB))
    up(make_cfg(access__members=[ANN, BOB], service__max_instances=4))
    assert record_now(fake_gcp) == [ANN, BOB]
    assert fake_gcp.state("run")[SERVICE]["template"]["scaling"]["maxInstanceCount"] == 4


def test_an_unreadable_record_revokes_nothing(fake_gcp):
    up(cfg_with(ANN, BOB))
    fake_gcp.state("run")[SERVICE]["annotations"][invokers.RECORD_ANNOTATION] = "not json"
    up(cfg_with(ANN))
    assert invokers_now(fake_gcp) == {ANN, BOB}, "without a record, BOB may have been granted by hand"
    assert record_now(fake_gcp) == [ANN]


@pytest.mark.parametrize("after_apply", [False, True], ids=["call-refused", "response-lost"])
def test_an_up_interrupted_while_changing_invokers_converges(fake_gcp, after_apply):
    before, after = cfg_with(ANN, BOB), cfg_with(ANN, CAROL)
    up(before)
    fake_gcp.clear_log()
    up(after)
    total = len(fake_gcp.mutating_requests())
    assert total == 3, "record grows, policy, record shrinks"
    for n in range(1, total + 1):
        fake_gcp.reset()
        up(before)
        fake_gcp.fail_mutation(n, status=500, after_apply=after_apply)
        with pytest.raises(Unavailable):
            up(after)
        fake_gcp.clear_faults()
        let_google_finish(fake_gcp)
        up(after)
        assert invokers_now(fake_gcp) == {ANN, CAROL}, f"fault at call {n}"
        assert record_now(fake_gcp) == sorted([ANN, CAROL]), f"fault at call {n}"
        assert_converged(fake_gcp, after)


@pytest.mark.parametrize("n", [1, 2])
def test_an_interrupted_grant_is_revoked_when_the_config_drops_it_before_the_rerun(fake_gcp, n):
    # The record grows before the grant: a member granted by an interrupted run is known to `up`.
    up(cfg_with(ANN))
    fake_gcp.fail_mutation(n, status=500, after_apply=True)
    with pytest.raises(Unavailable):
        up(cfg_with(ANN, CAROL))
    fake_gcp.clear_faults()
    let_google_finish(fake_gcp)
    up(cfg_with(ANN))
    assert invokers_now(fake_gcp) == {ANN} and record_now(fake_gcp) == [ANN]
    assert_converged(fake_gcp, cfg_with(ANN))


def test_a_concurrent_service_change_is_reread_before_the_record_is_written(fake_gcp):
    up(cfg_with(ANN))
    fake_gcp.clear_log()
    fake_gcp.fail(409, method_id="run.projects.locations.services.patch", grpc_status="ABORTED",
                  message="The service has been modified since it was read (etag mismatch).")
    up(cfg_with(ANN, BOB))
    patches = [r for r in fake_gcp.requests if r.method_id == "run.projects.locations.services.patch"]
    assert [r.status for r in patches] == [409, 200]
    assert all(r.body.get("etag") for r in patches), "read-compare-write with the etag"
    assert record_now(fake_gcp) == [ANN, BOB] and invokers_now(fake_gcp) == {ANN, BOB}
