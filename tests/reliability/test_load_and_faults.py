"""16 real MLflow clients through the Cloud Run front, while PostgreSQL, the server and the bucket
fail under them: nothing acknowledged is lost or doubled, no error reaches the caller.

Small shapes (bench/reliability.py --quick runs the same scenarios and prints the figures; the
full shapes are its default). The order matters only for time: one stack serves the module.
"""

from __future__ import annotations

import uuid

import pytest

from tests.reliability import scenarios, workload

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SHAPE = workload.Shape(clients=16, runs=1, params=5, batches=2, metrics=20, artifacts=1)


# An instance killed after it sent an answer's headers but before its body: the client has
# started reading a 200 and MLflow's client (urllib3) retries nothing once headers arrived.
CUT_ANSWER = ("IncompleteRead", "Connection broken", "Response ended prematurely")


def assert_nothing_lost(f: scenarios.Figures, cut_answers_allowed: bool = False) -> None:
    v = f.verification
    errors = [e for e in f.errors if not (cut_answers_allowed and any(c in e for c in CUT_ANSWER))]
    assert errors == [] and (cut_answers_allowed or f.user_errors == 0), f.errors
    assert v["stored_runs"] >= v["intended_runs"] == SHAPE.clients * SHAPE.runs
    assert (v["lost_runs"], v["lost_params"], v["lost_metrics"], v["lost_artifacts"], v["corrupt_artifacts"]) == (
        0, 0, 0, 0, 0), v
    assert (v["duplicated_params"], v["duplicated_metrics"], v["unfinished_runs"]) == (0, 0, 0), v
    # A run stored without an acknowledgement can only be a create_run the client sent again after
    # its answer was lost (MLflow has no idempotency key): a second copy of an intended run.
    cut_creates = sum(1 for e in f.errors if e.startswith("create_run") and any(c in e for c in CUT_ANSWER))
    assert v["duplicated_runs"] <= v["unacknowledged_runs"] <= v["duplicated_runs"] + cut_creates, v
    assert f.slot_errors == 0


def test_load_stores_exactly_what_was_acknowledged(rel_stack):
    # The stack serves the whole session (test_security's refused callers may have crossed its
    # front before, in whatever order the test processes take the files): only this load's requests.
    before = len(rel_stack.front.log)
    f = scenarios.load(rel_stack, SHAPE)
    crossed = rel_stack.front.log[before:]
    assert_nothing_lost(f)
    assert f.retried_answers == 0 and f.verification["unacknowledged_runs"] == 0
    assert f.verification["stored_runs"] == SHAPE.clients * SHAPE.runs
    assert 0 < f.peak_connections <= f.max_connections - 5
    # Every request crossed the front with the plugin's token, none was refused.
    assert {s.status for s in crossed} <= {200, 404}
    assert {s.caller for s in crossed} == {scenarios.INVOKER}


def test_postgres_restart_during_load(rel_stack):
    f = scenarios.postgres_restart(rel_stack, SHAPE)
    assert_nothing_lost(f)
    assert f.recover_s > 0


def test_bucket_stopped_during_uploads(rel_stack):
    f = scenarios.gcs_stopped(rel_stack, SHAPE)
    assert_nothing_lost(f)
    assert f.recover_s >= 3  # the outage itself


def test_server_killed_and_restarted_during_load(rel_stack):
    f = scenarios.server_killed(rel_stack, SHAPE)
    # Rare (a window of microseconds per in-flight request) but possible; see docs/reliability.md.
    assert_nothing_lost(f, cut_answers_allowed=True)
    assert f.retried_answers > 0, "the kill happened while requests were in flight"


def test_server_started_while_the_database_is_down_waits_then_serves(rel_stack):
    f = scenarios.started_while_db_down(rel_stack, SHAPE)
    assert_nothing_lost(f)
    out = rel_stack.server.output()
    assert "database not reachable yet" in out and "database reachable after" in out
    assert f.recover_s > 0


def test_a_lost_answer_is_retried_safely_for_log_batch_but_not_for_create_run(rel_stack):
    """What MLflow does when the client retries a write whose answer was lost (the write was done):
    log_batch is idempotent (metrics' primary key is key, timestamp, step, run, value; params and
    tags are upserts of the same value); create_run is not (a new run id each time)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    with rel_stack.client():
        client = MlflowClient(tracking_uri=rel_stack.url)
        exp = client.create_experiment(f"lost-answer-{uuid.uuid4().hex[:8]}")
        rel_stack.front.lose_answers["/runs/create"] = 1
        name = "retried-create"
        run_id = client.create_run(exp, run_name=name).info.run_id
        metrics = [Metric(f"m{i}", float(i), 1_700_000_000_000, 3) for i in range(10)]
        rel_stack.front.lose_answers["/runs/log-batch"] = 1
        client.log_batch(run_id, metrics=metrics, params=[Param("lr", "0.1")])
        assert rel_stack.front.lose_answers == {"/runs/create": 0, "/runs/log-batch": 0}

    q = rel_stack.pg.query
    assert q("SELECT count(*) FROM metrics WHERE run_uuid = %s", (run_id,)) == [(10,)]
    assert q("SELECT count(*) FROM params WHERE run_uuid = %s", (run_id,)) == [(1,)]
    runs = q("SELECT run_uuid FROM runs WHERE experiment_id = %s AND name = %s", (int(exp), name))
    assert len(runs) == 2 and run_id in {r[0] for r in runs}
