"""Batched trace tag / metadata merges (server/trace_merges.py) leave exactly the rows SQLAlchemy's
own merges leave, on real PostgreSQL: new keys, existing keys with another value, a key merged
twice, merges the session already holds, merges rolled back, and a store's trace calls."""

from __future__ import annotations

import pytest

from mlflow_gcp.server import trace_merges

from tests.support.store_pair import mlflows_and_ours


def test_rows_are_in_request_and_key_order_with_the_last_value():
    assert trace_merges.ordered_rows({("b", "k"): "1", ("a", "z"): None, ("a", "c"): "2"}) == [
        ("a", "c", "2"), ("a", "z", None), ("b", "k", "1")]
    head, tail = trace_merges.upsert_statement("trace_tags")
    assert head == 'INSERT INTO trace_tags (request_id, "key", "value")'
    assert tail == 'ON CONFLICT (request_id, "key") DO UPDATE SET "value" = EXCLUDED."value"'


@pytest.fixture(scope="module")
def stores(new_database, tmp_path_factory):
    """(MLflow's store, ours) on two fresh databases."""
    with mlflows_and_ours(new_database, tmp_path_factory.mktemp("merges"), "merge") as (stock, ours):
        with ours.ManagedSessionMaker() as session:  # the batching session, not SQLAlchemy's own
            assert "BatchedMergeSession" in [c.__name__ for c in type(session).__mro__]
        yield stock, ours


def merges(store) -> dict:
    from mlflow.entities import TraceInfo, TraceLocation, TraceState
    from mlflow.store.tracking.dbmodels.models import SqlTraceMetadata, SqlTraceTag

    exp = store.create_experiment("merges")
    info = TraceInfo(trace_id="tr-" + "a" * 32, trace_location=TraceLocation.from_experiment_id(exp),
                     request_time=1_700_000_000_000, state=TraceState.OK, execution_duration=5,
                     trace_metadata={"m1": "x", "m2": "y"}, tags={"t1": "one"})
    store.start_trace(info)
    with store.ManagedSessionMaker(read_only=False) as session:
        session.merge(SqlTraceTag(request_id=info.trace_id, key="t1", value="changed"))  # existing row
        session.merge(SqlTraceTag(request_id=info.trace_id, key="t2", value="first"))
        session.merge(SqlTraceTag(request_id=info.trace_id, key="t2", value="second"))  # twice: last
        held = session.get(SqlTraceMetadata, (info.trace_id, "m1"))  # in the session: ORM's merge
        session.merge(SqlTraceMetadata(request_id=info.trace_id, key="m1", value="held"))
        session.merge(SqlTraceMetadata(request_id=info.trace_id, key="m3", value=None))
        assert held.value == "held"
    with store.ManagedSessionMaker(read_only=False) as session:
        session.merge(SqlTraceTag(request_id=info.trace_id, key="gone", value="x"))
        session.rollback()
    store.set_trace_tag(info.trace_id, "t3", "via set_trace_tag")
    store.set_trace_tag(info.trace_id, "t1", "again")
    got = store.get_trace_info(info.trace_id)
    return {"tags": {k: v for k, v in got.tags.items() if k != "mlflow.artifactLocation"},
            "metadata": got.trace_metadata}


def test_batched_merges_leave_sqlalchemys_rows(stores):
    stock, ours = stores
    expected = merges(stock)
    assert expected["tags"]["t2"] == "second" and "gone" not in expected["tags"]
    assert merges(ours) == expected


def new_trace_with_merged_rows(store, exp_name: str, via_commit: bool) -> dict:
    """A trace row added but not yet flushed, then tags/metadata merged for it: the rows must be
    written after the trace row (foreign key), whether the commit or a statement comes first."""
    from sqlalchemy import text

    from mlflow.store.tracking.dbmodels.models import SqlTraceInfo, SqlTraceMetadata, SqlTraceTag

    exp = store.create_experiment(exp_name)
    trace_id = "tr-" + ("c" if via_commit else "d") * 32
    with store.ManagedSessionMaker(read_only=False) as session:
        session.add(SqlTraceInfo(request_id=trace_id, experiment_id=int(exp), timestamp_ms=1_700_000_000_000,
                                 execution_time_ms=1, status="OK"))
        session.merge(SqlTraceTag(request_id=trace_id, key="t", value="v"))
        session.merge(SqlTraceMetadata(request_id=trace_id, key="m", value="w"))
        if not via_commit:
            session.execute(text("SELECT 1"))
    got = store.get_trace_info(trace_id)
    return {"tag": got.tags.get("t"), "metadata": got.trace_metadata.get("m")}


@pytest.mark.parametrize("via_commit", [True, False], ids=["commit", "statement"])
def test_merges_for_an_unflushed_trace_follow_it(stores, via_commit):
    stock, ours = stores
    name = f"unflushed-{via_commit}"
    expected = new_trace_with_merged_rows(stock, name, via_commit)
    assert expected == {"tag": "v", "metadata": "w"}
    assert new_trace_with_merged_rows(ours, name, via_commit) == expected
