"""Real PostgreSQL failures during a metric write give the same error through our bulk store as
through MLflow's own SqlAlchemyStore, and the same HTTP answer from our server as from stock
`mlflow server`: a statement timeout, a backend terminated mid-statement, a deadlock (retried as
MLflow retries it, and one that outlasts the retries), a unique violation, and the run deleted
while the write is under way. tests/support/pgfaults.py injects them.

Each write is made three ways: log_metric, a metrics-only log_batch (our store's own
transaction; over HTTP our fast path) and a log_batch with a tag (MLflow's log_batch around our
metric statements).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest
import requests

from mlflow_gcp.server import store as store_mod

from tests.support import pgfaults
from tests.support.stock_server import stock_server

pytestmark = pytest.mark.slow

T0 = 1_700_000_000_000
KINDS = ["log_metric", "log_batch", "log_batch_tag"]


@dataclass
class Target:
    """Somewhere metric writes go: a store object, or a server over HTTP."""

    name: str
    dbname: str
    admin: object  # MLflow's SqlAlchemyStore on the same database: creates, deletes, reads runs
    write: Callable[[str, str, str, float, int], tuple]  # (kind, run, key, value, step) -> outcome
    experiment_id: str = field(default="")
    store: object = None  # the store written to, when not over HTTP

    def new_run(self) -> str:
        return self.admin.create_run(self.experiment_id, "u", T0, [], "faults").info.run_id

    def latest(self, run_id: str) -> dict:
        return self.admin.get_run(run_id).data.metrics


def store_writer(store):
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException

    def write(kind, run_id, key, value, step):
        try:
            if kind == "log_metric":  # the Metric MLflow's handler builds
                store.log_metric(run_id, Metric(key, value, T0 + step, step, None, None, None, run_id))
            else:
                tags = [RunTag("phase", "fault")] if kind == "log_batch_tag" else []
                store.log_batch(run_id, [Metric(key, value, T0 + step, step)], [], tags)
        except MlflowException as err:
            return type(err).__name__, err.error_code, err.message
        except Exception as err:  # a plain exception is itself the failure under test
            return type(err).__name__, None, str(err)
        return ("ok",)

    return write


def http_writer(url: str):
    session = requests.Session()

    def write(kind, run_id, key, value, step):
        # The bodies MLflow's client sends (tests/unit/test_client_bodies.py).
        if kind == "log_metric":
            path, body = "log-metric", {"run_uuid": run_id, "key": key, "value": value, "timestamp": T0 + step,
                                        "step": step, "run_id": run_id}
        else:
            body = {"run_id": run_id, "metrics": [{"key": key, "value": value, "timestamp": T0 + step, "step": step}]}
            if kind == "log_batch_tag":
                body["tags"] = [{"key": "phase", "value": "fault"}]
            path = "log-batch"
        resp = session.post(f"{url}/api/2.0/mlflow/runs/{path}", data=json.dumps(body),
                            headers={"Content-Type": "application/json"}, timeout=120)
        if resp.status_code == 200:
            return ("ok",)
        try:
            answer = resp.json()
        except ValueError:
            answer = {"error_code": None, "message": resp.text}
        return resp.status_code, answer.get("error_code"), answer.get("message", "")

    return write


def new_target_db(new_database, prefix: str):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = new_database(prefix)
    admin = SqlAlchemyStore(uri, "/tmp/mlflow-gcp-faults-artifacts")  # creates MLflow's schema
    pgfaults.install(uri.rsplit("/", 1)[1])
    return uri, admin


@pytest.fixture(scope="module")
def stores(new_database):
    """Both stores on one database with the faults installed."""
    uri, admin = new_target_db(new_database, "mlflow_gcp_faults")
    bulk = store_mod._bulk_class()(uri, "/tmp/mlflow-gcp-faults-artifacts")
    assert type(bulk).__name__ == "BulkPostgresStore"
    exp = admin.create_experiment("faults")
    dbname = uri.rsplit("/", 1)[1]
    return {"mlflow": Target("mlflow", dbname, admin, store_writer(admin), exp, admin),
            "bulk": Target("bulk", dbname, admin, store_writer(bulk), exp, bulk)}


@pytest.fixture(scope="module")
def servers(new_database, start_server, tmp_path_factory):
    """Stock `mlflow server` and ours, each on a database of its own with the faults installed
    (after the schema exists: each server creates it)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = tmp_path_factory.mktemp("faults")
    stock_db, ours_db = new_database("mlflow_gcp_faults_stock"), new_database("mlflow_gcp_faults_ours")
    with stock_server(stock_db, tmp) as stock:
        ours = start_server({"DB_URI": ours_db, "ARTIFACT_ROOT": str(tmp / "ours-artifacts")})
        stock_url = stock.wait()
        targets = {}
        for name, url, uri in (("stock", stock_url, stock_db), ("ours", ours.url, ours_db)):
            admin = SqlAlchemyStore(uri, str(tmp / "artifacts"))
            pgfaults.install(uri.rsplit("/", 1)[1])
            targets[name] = Target(name, uri.rsplit("/", 1)[1], admin, http_writer(url), admin.create_experiment("faults"))
        yield targets
    assert "tracking store: BulkPostgresStore" in ours.output()


# ---------------------------------------------------------------- the faults


def statement_timeout(t: Target, kind: str) -> tuple:
    return t.write(kind, t.new_run(), "fault.timeout", 1.0, 0)


def terminated_backend(t: Target, kind: str) -> tuple:
    run_id = t.new_run()
    blocker = pgfaults.Blocker(t.dbname)
    try:
        join = pgfaults.in_thread(lambda: t.write(kind, run_id, "fault.wait", 1.0, 0))
        blocker.terminate(blocker.waiter())
    finally:
        blocker.release()
    outcome, error = join()
    assert error is None, error
    # The dead connection was not handed out again: the next write works.
    assert t.write(kind, run_id, "after", 2.0, 1) == ("ok",)
    return outcome


def _deadlock(t: Target, kind: str, rounds: int) -> tuple:
    run_id = t.new_run()
    assert t.write("log_metric", run_id, "fault.deadlock", 0.0, 0) == ("ok",)
    before = pgfaults.deadlocks(t.dbname)
    locker = pgfaults.Deadlocker(t.dbname, run_id, "fault.deadlock")
    try:
        join = pgfaults.in_thread(lambda: t.write(kind, run_id, "fault.deadlock", 5.0, 1))
        for _ in range(rounds):
            locker.cycle(("fault.deadlock", 5.0, T0 + 1, 1, False, run_id))
    finally:
        locker.release()
    outcome, error = join()
    assert error is None, error
    assert _wait_for(lambda: pgfaults.deadlocks(t.dbname) >= before + rounds), "PostgreSQL saw no deadlock"
    stored = t.latest(run_id)["fault.deadlock"]
    return outcome + (("stored", stored),)


def deadlock_retried(t: Target, kind: str) -> tuple:
    return _deadlock(t, kind, 1)


def deadlock_every_retry(t: Target, kind: str) -> tuple:
    return _deadlock(t, kind, 3)  # MLflow's first try and its 2 retries


def unique_violation(t: Target, kind: str) -> tuple:
    run_id = t.new_run()
    assert t.write(kind, run_id, "fault.unique.a", 7.0, 0) == ("ok",)
    return t.write(kind, run_id, "fault.unique.b", 7.0, 0)


def _run_removed_meanwhile(t: Target, kind: str, remove) -> tuple:
    run_id = t.new_run()
    blocker = pgfaults.Blocker(t.dbname)
    try:
        join = pgfaults.in_thread(lambda: t.write(kind, run_id, "fault.wait", 1.0, 0))
        blocker.waiter()
        remove(run_id)  # the write is inside its INSERT, past MLflow's run check
    finally:
        blocker.release()
    outcome, error = join()
    assert error is None, error
    return outcome


def run_garbage_collected_meanwhile(t: Target, kind: str) -> tuple:
    return _run_removed_meanwhile(t, kind, t.admin._hard_delete_run)  # what `mlflow gc` does


def run_deleted_meanwhile(t: Target, kind: str) -> tuple:
    return _run_removed_meanwhile(t, kind, t.admin.delete_run)


def _wait_for(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout  # pg_stat counters are published with a short delay
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# fault -> (the exception type and MLflow error code, or "ok"; a word the message must hold)
EXPECTED = {
    statement_timeout: (("MlflowException", "TEMPORARILY_UNAVAILABLE"), "statement timeout"),
    terminated_backend: (("MlflowException", "TEMPORARILY_UNAVAILABLE"), "terminat"),
    deadlock_retried: (("ok",), None),
    deadlock_every_retry: (("MlflowException", "TEMPORARILY_UNAVAILABLE"), "deadlock"),
    unique_violation: (("MlflowException", "BAD_REQUEST"), "fault_unique"),
    run_garbage_collected_meanwhile: (("MlflowException", "BAD_REQUEST"), "foreign key"),
    # The metric is written (the run was active when checked); a tag in the batch is then refused.
    run_deleted_meanwhile: ({"log_batch_tag": ("MlflowException", "INVALID_PARAMETER_VALUE")}, "active"),
}
HTTP_STATUS = {"TEMPORARILY_UNAVAILABLE": 503, "BAD_REQUEST": 400, "INVALID_PARAMETER_VALUE": 400}


def expected(fault, kind: str) -> tuple[tuple, str | None]:
    want, word = EXPECTED[fault]
    if isinstance(want, dict):  # per kind; the others succeed
        return (want[kind], word) if kind in want else (("ok",), None)
    return want, word


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", list(EXPECTED), ids=lambda f: f.__name__)
def test_bulk_store_fails_as_mlflows_store_does(stores, fault, kind):
    want, word = expected(fault, kind)
    outcomes = {name: fault(target, kind) for name, target in stores.items()}
    for name, outcome in outcomes.items():
        assert outcome[:len(want)] == want, f"{name}: {outcome}"
        if word:
            assert word in outcome[2], f"{name}: {outcome}"
    assert outcomes["bulk"][:2] == outcomes["mlflow"][:2]
    if fault in (deadlock_retried, deadlock_every_retry):
        assert outcomes["bulk"][-1] == outcomes["mlflow"][-1]  # what the run holds afterwards


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", list(EXPECTED), ids=lambda f: f.__name__)
def test_our_server_answers_faults_as_stock_does(servers, fault, kind):
    want, word = expected(fault, kind)
    answers = {name: fault(target, kind) for name, target in servers.items()}
    expected_status = ("ok",) if want == ("ok",) else (HTTP_STATUS[want[1]], want[1])
    for name, answer in answers.items():
        assert answer[:len(expected_status)] == expected_status, f"{name}: {answer}"
    assert answers["ours"][:2] == answers["stock"][:2]


def test_any_other_error_of_a_metrics_only_batch_is_mlflows_internal_error(stores, monkeypatch):
    # MLflow's test_log_batch_internal_error, for both stores: log_batch wraps whatever its
    # writes raise in MlflowException(INTERNAL_ERROR).
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    def broken(*_args, **_kwargs):
        raise Exception("Some internal error")

    monkeypatch.setattr(SqlAlchemyStore, "_log_metrics", broken)
    for target in stores.values():
        outcome = target.write("log_batch", target.new_run(), "m", 1.0, 0)
        assert outcome == ("MlflowException", "INTERNAL_ERROR", "Some internal error"), target.name


def test_search_loads_run_data_in_bulk_with_no_query_per_run(stores):
    # The runs a search loads get their metrics, params and tags from three queries whatever
    # their number (server/store.py; SQLAlchemy's deprecated `noload` no longer needed), with the
    # very values MLflow's ORM loads (infinities, doubles that print long, empty strings).
    from mlflow.entities import Metric, Param, RunTag, ViewType
    from sqlalchemy import event

    bulk, admin = stores["bulk"].store, stores["mlflow"].admin
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement)

    def search(experiment_id):
        statements.clear()
        runs = bulk.search_runs([experiment_id], "", ViewType.ACTIVE_ONLY, max_results=100)
        return runs, len(statements)

    event.listen(bulk.engine, "before_cursor_execute", count)
    try:
        counts, found = [], []
        for size in (2, 9):
            exp = admin.create_experiment(f"search-{size}")
            for n in range(size):
                run_id = admin.create_run(exp, "u", T0 + n, [RunTag("n", str(n))], f"run-{n}").info.run_id
                admin.log_batch(run_id, [Metric("m", n / 2, T0, 0), Metric("odd", 0.1 + 0.2 * n, T0 + n, -n),
                                         Metric("inf", float("-inf") if n % 2 else float("inf"), T0, 2**40)],
                                [Param("p", str(n)), Param("e", "")], [RunTag("t", "x"), RunTag("u", "é" * n)])
            runs, queries = search(exp)
            assert [r.to_dictionary() for r in runs] == [r.to_dictionary() for r in admin.search_runs([exp], "", ViewType.ACTIVE_ONLY, max_results=100)]
            counts.append(queries)
            found.append(len(runs))
    finally:
        event.remove(bulk.engine, "before_cursor_execute", count)
    assert found == [2, 9]
    assert counts[0] == counts[1], counts


def test_bulk_writers_of_the_same_keys_in_opposite_orders_never_deadlock(stores):
    # Two batches of the same 500 metrics (same values: the same metrics rows) in opposite
    # orders at once. MLflow's store survives through its deadlock retry; ours writes rows in
    # one order, so PostgreSQL sees no deadlock at all (the retry stays a safety net).
    from mlflow.entities import Metric

    keys = [f"c{i:03d}" for i in range(500)]
    rounds = 10  # enough for unordered writes to deadlock (seen: 5 in 10)

    def contend(target) -> list[tuple]:
        outcomes = []
        for _ in range(rounds):
            run_id = target.new_run()
            joins = [pgfaults.in_thread(lambda order=order: target.store.log_batch(
                run_id, [Metric(k, 1.0, T0, 0) for k in order], [], [])) for order in (keys, keys[::-1])]
            for join in joins:
                _, error = join()
                outcomes.append(("ok",) if error is None else (type(error).__name__, getattr(error, "error_code", None)))
            assert len(target.latest(run_id)) == len(keys)
        return outcomes

    dbname = stores["bulk"].dbname
    before = pgfaults.deadlocks(dbname)
    assert contend(stores["bulk"]) == [("ok",)] * 2 * rounds
    time.sleep(pgfaults.STATS_DELAY_S)  # PostgreSQL publishes a backend's counters when it idles
    assert pgfaults.deadlocks(dbname) == before
    assert contend(stores["mlflow"]) == [("ok",)] * 2 * rounds


def test_tag_writers_of_the_same_keys_in_opposite_orders_never_deadlock(stores):
    # Two batches of the same 100 new tags (MLflow's most per batch) in opposite orders at once,
    # as two MLflow clients logging the same 500 tags send in their middle batch. MLflow's
    # _set_tags inserts them in the order given and retries only a unique violation: stock
    # answered INTERNAL_ERROR for a deadlock on the tags key (CI, and its log). Ours gives
    # MLflow the tags in key order, so PostgreSQL sees no deadlock (MLflow's store, tried the
    # same way: a deadlock in the first round).
    import threading

    from mlflow.entities import RunTag

    keys = [f"fault.slow.{i:03d}" for i in range(100)]  # 5 ms a row: the two INSERTs overlap
    rounds = 4
    target = stores["bulk"]

    before = pgfaults.deadlocks(target.dbname)
    outcomes = []
    for _ in range(rounds):
        run_id = target.new_run()
        barrier = threading.Barrier(2)

        def write(order):
            tags = [RunTag(k, "v") for k in order]
            barrier.wait()
            target.store.log_batch(run_id, [], [], tags)

        joins = [pgfaults.in_thread(lambda order=order: write(order)) for order in (keys, keys[::-1])]
        for join in joins:
            _, error = join()
            outcomes.append("ok" if error is None else f"{type(error).__name__}: {error}"[:300])
        assert set(target.admin.get_run(run_id).data.tags) >= set(keys)
    assert outcomes == ["ok"] * 2 * rounds
    time.sleep(pgfaults.STATS_DELAY_S)  # PostgreSQL publishes a backend's counters when it idles
    assert pgfaults.deadlocks(target.dbname) == before


def test_a_tag_batch_is_checked_in_the_order_given(stores):
    # Ours sorts the tags before MLflow's code sees them: an error still names the bad tag by
    # its place in the request, as MLflow's does, and nothing of the batch is written.
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    answers = {}
    for name in ("mlflow", "bulk"):
        target = stores[name]
        run_id = target.new_run()
        with pytest.raises(MlflowException) as err:
            target.store._set_tags(run_id, [RunTag("z", "1"), RunTag("a", "2"), RunTag("b/../c", "3")])
        answers[name] = (err.value.error_code, err.value.message, target.admin.get_run(run_id).data.tags)
    assert answers["bulk"] == answers["mlflow"]
    assert "tags[2]" in answers["bulk"][1] and not {"z", "a"} & set(answers["bulk"][2])


def test_a_metrics_batch_is_one_statement_with_no_begin_or_commit(stores):
    # server/store.py: the run check and both writes in one autocommitted prepared statement; a
    # run that is not active gets MLflow's own check and error, and nothing is written.
    from mlflow.entities import Metric
    from sqlalchemy import event

    target = stores["bulk"]
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement.split(None, 1)[0].upper())

    run_id = target.new_run()
    event.listen(target.store.engine, "before_cursor_execute", count)
    try:
        target.store.log_batch(run_id, [Metric(f"k{i % 3}", i / 3, T0, i) for i in range(9)], [], [])
        written = list(statements)
        target.admin.delete_run(run_id)
        statements.clear()
        refused = target.write("log_batch", run_id, "k0", 9.0, 99)
    finally:
        event.remove(target.store.engine, "before_cursor_execute", count)
    # The statement is prepared once per connection (PREPARE), then each batch is one EXECUTE.
    assert [s for s in written if s != "PREPARE"] == ["EXECUTE"], written
    refused_statements = [s for s in statements if s != "PREPARE"]
    assert refused[:2] == ("MlflowException", "INVALID_PARAMETER_VALUE"), refused
    assert refused_statements[0] == "EXECUTE" and len(refused_statements) > 1  # then MLflow's check raised
    target.admin.restore_run(run_id)
    assert target.latest(run_id) == {"k0": 2.0, "k1": 7 / 3, "k2": 8 / 3}


def test_our_server_replaces_connections_closed_while_idle_in_its_pool(servers):
    # The pool's ping (server/pool_plugin.py quiet_ping) skips its round trip only while the
    # socket is quiet; a backend terminated while its connection sat in the pool leaves the
    # server's FATAL message and the end of the stream there, and the real ping replaces it.
    from tests.conftest import _pg_connect as connect

    target = servers["ours"]
    run_id = target.new_run()
    for kind in KINDS:
        assert target.write(kind, run_id, f"idle.{kind}", 1.0, 0) == ("ok",)
    admin = connect(target.dbname)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                        "AND state = 'idle'", (target.dbname,))
            pids = [row[0] for row in cur.fetchall()]
            assert pids
            cur.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s) AS pid", (pids,))

            def gone():
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
                return cur.fetchone()[0] == 0

            assert _wait_for(gone)
    finally:
        admin.close()
    for step, kind in enumerate(KINDS * 3, start=1):
        assert target.write(kind, run_id, f"idle.{kind}", 2.0, step) == ("ok",), kind


def test_metric_values_are_stored_as_mlflows_store_stores_them(stores):
    # server/store.py sends plain values (what MLflow's protobuf parse gives) as column arrays
    # to its prepared statement, and renders others as MLflow's insert would: both store what
    # MLflow's store stores, edges included. log_metric_fields is the fast path's entry.
    from mlflow.entities import Metric

    nan = float("nan")
    plain = [("e", -0.0, T0, 1), ("e", 5e-324, 2**63 - 1, -2**63), ("e", 1.7976931348623157e308, 0, 2**63 - 1),
             ("e", 0.1 + 0.2, T0, 3), ("e", float("inf"), T0, 4), ("f", float("-inf"), T0, 0),
             ("NULL", nan, T0, 0), ("NULL", float("nan"), T0, 0), ("a b:c/\u00e9", 0.1, T0, 0), ("e", 0.1 + 0.2, T0, 3)]
    other = plain + [("n", 3, T0, 2), ("n", 2**60 + 1, T0, 4), ("n", -0.0, 2, 1)]  # int values

    def stored(target, write) -> dict:
        run_id = target.new_run()
        write(run_id)
        keys = target.latest(run_id)
        history = {k: sorted((m.step, m.timestamp, repr(m.value)) for m in target.admin.get_metric_history(run_id, k))
                   for k in keys}
        return {"latest": {k: repr(v) for k, v in keys.items()}, "history": history}

    bulk, mlflow = stores["bulk"], stores["mlflow"]
    for batch in (plain, other):
        want = stored(mlflow, lambda run_id: mlflow.store.log_batch(run_id, [Metric(*m) for m in batch], [], []))
        assert stored(bulk, lambda run_id: bulk.store.log_batch(run_id, [Metric(*m) for m in batch], [], [])) == want
    want = stored(mlflow, lambda run_id: mlflow.store.log_batch(run_id, [Metric(*m) for m in plain], [], []))
    assert stored(bulk, lambda run_id: bulk.store.log_metric_fields(run_id, [(*m, None) for m in plain])) == want
    assert want["latest"]["e"] == repr(1.7976931348623157e308) and want["history"]["NULL"] == [(0, T0, "nan")]
    # finite values whose sum is not (log_metric_fields then looks at each), and plain ones
    for batch in ([("big", 1e308, T0, 0), ("big", 1e308, T0, 1), ("big", -0.0, T0, 2)],
                  [("m", 0.5, T0, 0), ("m", 0.5, T0, 0), ("m", -0.0, T0, 1), ("n", 2.5, T0 + 1, 1)]):
        want = stored(mlflow, lambda run_id: mlflow.store.log_batch(run_id, [Metric(*m) for m in batch], [], []))
        assert stored(bulk, lambda run_id: bulk.store.log_metric_fields(run_id, [(*m, None) for m in batch])) == want


def test_fast_path_metrics_get_mlflows_checks_and_errors(stores):
    # log_metric_fields skips MLflow's per-metric check only for a batch it would pass (keys that
    # passed it before, no negative timestamp); otherwise MLflow's check answers, first bad
    # metric first; a run that is unknown or deleted gets MLflow's own error.
    from mlflow.entities import Metric

    bulk, mlflow = stores["bulk"], stores["mlflow"]

    def outcome(call):
        try:
            call()
        except Exception as err:
            return type(err).__name__, getattr(err, "error_code", None), str(err)
        return ("ok",)

    deleted = mlflow.new_run()
    mlflow.admin.delete_run(deleted)
    cases = [
        [("good", 1.0, T0, 0), ("good", 2.0, T0, 1)],
        [("good", 1.0, T0, 0), ("good", 2.0, -1, 1)],
        [("good", 1.0, T0, 0), ("bad?", 2.0, T0, 1), ("../x", 1.0, T0, 0)],
        [("k" * 251, 1.0, T0, 0)],
        [(f"many{i}", 1.0, T0, 0) for i in range(1001)],
    ]
    for batch in cases:
        for run in ("new", deleted, "0" * 32):
            want = outcome(lambda: mlflow.store.log_batch(mlflow.new_run() if run == "new" else run,
                                                          [Metric(*m) for m in batch], [], []))
            got = outcome(lambda: bulk.store.log_metric_fields(bulk.new_run() if run == "new" else run,
                                                              [(*m, None) for m in batch]))
            assert got == want, (batch[:3], run)


@pytest.mark.parametrize("fault", [statement_timeout, unique_violation, terminated_backend], ids=lambda f: f.__name__)
def test_the_pooled_connection_write_fails_as_a_sqlalchemy_connection_does(new_database, fault):
    # server/store.py PooledScope runs the metric write on the pool's psycopg2 connection, and
    # engines with event listeners on a SQLAlchemy Connection: the same error, to the letter,
    # for a driver error and for a connection lost mid-statement (then not handed out again).
    from sqlalchemy import event
    from sqlalchemy.engine import Connection

    uri, admin = new_target_db(new_database, "mlflow_gcp_pooled")
    exp = admin.create_experiment("pooled")
    dbname = uri.rsplit("/", 1)[1]
    plain = store_mod._bulk_class()(uri, "/tmp/mlflow-gcp-faults-artifacts")
    # another URI: MLflow keeps one engine per URI
    evented = store_mod._bulk_class()(uri + "?application_name=evented", "/tmp/mlflow-gcp-faults-artifacts")
    event.listen(evented.engine, "before_cursor_execute", lambda *_args: None)
    assert not plain.engine._has_events and evented.engine._has_events
    executed = []
    real = Connection.exec_driver_sql

    def spy(self, statement, *args, **kwargs):
        executed.append(statement.split(None, 1)[0])
        return real(self, statement, *args, **kwargs)

    outcomes = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Connection, "exec_driver_sql", spy)
        for name, store in (("pooled", plain), ("connection", evented)):
            target = Target(name, dbname, admin, store_writer(store), exp, store)
            executed.clear()
            outcomes[name] = fault(target, "log_batch")
            outcomes[name + " statements"] = [s for s in executed if s in ("PREPARE", "EXECUTE")]
    assert outcomes["pooled"][:2] == ("MlflowException", "TEMPORARILY_UNAVAILABLE" if fault is not unique_violation
                                      else "BAD_REQUEST"), outcomes
    def without_ids(outcome):  # each fault makes its own run
        return tuple(re.sub(r"[0-9a-f]{32}", "<run id>", part) if isinstance(part, str) else part for part in outcome)

    assert without_ids(outcomes["pooled"]) == without_ids(outcomes["connection"])
    assert outcomes["pooled statements"] == [] and "EXECUTE" in outcomes["connection statements"]
