"""server/history.py: which requests it answers, and that its JSON is MLflow's text for the rows."""

from __future__ import annotations

import json
import random
import threading

import pytest

from mlflow_gcp.server.history import parse, rows_json

RUN = "a" * 32


def test_the_client_shape_and_the_uis_are_answered_anything_else_is_mlflows():
    assert parse(f"run_uuid={RUN}&run_id={RUN}&metric_key=loss&max_results=25000".encode()) == (RUN, "loss", 25000, None)
    assert parse(f"run_id={RUN}&metric_key=a%20b&page_token=eyJ9".encode()) == (RUN, "a b", None, "eyJ9")
    for query in [
        f"run_uuid={RUN}&metric_key=loss",  # MLflow requires run_id
        f"run_id={RUN}&run_uuid={'b' * 32}&metric_key=loss",
        f"run_id={RUN}",
        f"run_id={RUN}&metric_key=loss&max_results=0",
        f"run_id={RUN}&metric_key=loss&max_results=-1",
        f"run_id={RUN}&metric_key=loss&max_results=+5",
        f"run_id={RUN}&metric_key=loss&max_results=2147483648",
        f"run_id={RUN}&metric_key=loss&metric_key=acc",
        f"run_id={RUN}&metric_key=loss&extra=1",
        "run_id=%ff&metric_key=loss",
    ]:
        assert parse(query.encode()) is None, query


def test_rows_are_written_as_mlflows_compact_json():
    from mlflow.entities import Metric
    from mlflow.protos.service_pb2 import GetMetricHistory
    from mlflow.utils.proto_json_utils import message_to_json

    rng = random.Random(7)
    specials = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1e300, 0.1, 2.0, -3.5]
    rows = []
    for i in range(300):
        value = rng.choice(specials) if i % 5 == 0 else rng.uniform(-1e6, 1e6)
        nan = value != value
        rows.append((0.0 if nan else value, rng.randrange(0, 1 << 62), rng.randrange(-(1 << 40), 1 << 40), nan))
    key = 'lo"ss/é'
    response = GetMetricHistory.Response()
    response.metrics.extend(
        [Metric(key, float("nan") if nan else v, ts, step).to_proto() for v, ts, step, nan in rows])
    expected = message_to_json(response, pretty=False)
    assert '{"metrics":[' + rows_json(json.dumps(key), rows) + "]}" == expected


# ------------------------------------------------------------- the chart request (bulk-interval)


def test_chart_requests_of_the_plain_shape_are_answered_anything_else_is_mlflows():
    from mlflow_gcp.server.chart import parse

    runs = "run_ids=r1&run_ids=r2"
    assert parse(f"{runs}&metric_key=acc&max_results=320".encode()) == {
        "runs": ["r1", "r2"], "key": "acc", "n": 320, "start": None, "end": None}
    assert parse(b"run_ids=r1&metric_key=a%2Fb") == {"runs": ["r1"], "key": "a/b", "n": 2500, "start": None, "end": None}
    got = parse(f"{runs}&metric_key=acc&start_step=-3&end_step=10&max_results=1".encode())
    assert (got["n"], got["start"], got["end"]) == (1, -3, 10)
    for query in [
        "metric_key=acc",  # no run
        "run_ids=r1",  # no key
        "run_ids=r1&metric_key=",
        "run_ids=r1&run_ids=r1&metric_key=acc",  # MLflow answers the run twice
        "run_ids=&metric_key=acc",
        "&".join(f"run_ids=r{i}" for i in range(101)) + "&metric_key=acc",
        "run_ids=r1&metric_key=acc&metric_key=b",
        "run_ids=r1&metric_key=acc&max_results=0",
        "run_ids=r1&metric_key=acc&max_results=2501",
        "run_ids=r1&metric_key=acc&max_results=032",
        "run_ids=r1&metric_key=acc&max_results=1.5",
        "run_ids=r1&metric_key=acc&start_step=1",  # both or neither
        "run_ids=r1&metric_key=acc&end_step=1",
        "run_ids=r1&metric_key=acc&start_step=5&end_step=4",
        "run_ids=r1&metric_key=acc&start_step=x&end_step=4",
        "run_ids=r1&metric_key=acc&start_step=0&end_step=99999999999999999999",
        "run_ids=r1&metric_key=acc&extra=1",
        "run_ids=%ff&metric_key=acc",
    ]:
        assert parse(query.encode()) is None, query
    assert len(parse(("&".join(f"run_ids=r{i}" for i in range(100)) + "&metric_key=acc").encode())["runs"]) == 100


def test_chart_rows_are_written_as_mlflows_compact_json():
    from mlflow.entities import Metric
    from mlflow.protos.service_pb2 import GetMetricHistoryBulkInterval
    from mlflow.store.tracking.sqlalchemy_store import MetricWithRunId
    from mlflow.utils.proto_json_utils import message_to_json

    from mlflow_gcp.server.chart import body

    key = 'a"cc/é'
    rows = [("r1", 0.0, 5, 1, True), ("r1", float("inf"), 6, 2, False), ("r2", -0.0, 1 << 60, -(1 << 40), False),
            ("r2", 0.1, 0, 0, False), ("r3", 5e-324, 7, 7, False), ("r3", float("-inf"), 8, 9, False)]
    response = GetMetricHistoryBulkInterval.Response()
    response.metrics.extend([
        MetricWithRunId(Metric(key, float("nan") if nan else v, ts, step), run).to_proto()
        for run, v, ts, step, nan in rows])
    assert body(key, rows).decode() == message_to_json(response, pretty=False)
    assert body(key, []) == message_to_json(GetMetricHistoryBulkInterval.Response(), pretty=False).encode()


@pytest.fixture(scope="module")
def metrics_table(new_database):
    """A fresh database with MLflow's metrics table (its columns, primary key and indexes), and
    runs of uneven lengths: none, 1, 2, one per bucket, just over, many, repeated steps, NaN/inf,
    the smallest and largest steps (repeated), one step for every row, every step twice."""
    import psycopg2

    url = new_database("mlflow_gcp_chart")
    conn = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute('CREATE TABLE metrics ("key" varchar(250) NOT NULL, "value" double precision NOT NULL, '
                    '"timestamp" bigint NOT NULL, "step" bigint NOT NULL DEFAULT 0, is_nan boolean NOT NULL '
                    'DEFAULT false, run_uuid varchar(32) NOT NULL, '
                    'PRIMARY KEY ("key", "timestamp", "step", run_uuid, "value", is_nan))')
        cur.execute("CREATE INDEX index_metrics_run_uuid ON metrics (run_uuid)")
        cur.execute('CREATE INDEX index_metrics_run_uuid_key_step ON metrics (run_uuid, "key", "step")')
        rng = random.Random(3)
        lengths = {"one": 1, "two": 2, "seven": 7, "eight": 8, "nine": 9, "long": 2600, "odd": 977, "edge": 40,
                   "flat": 61, "pairs": 650}
        edges = [-2**63, -2**63, -2**63 + 1, -1, 0, 0, 2**63 - 2, 2**63 - 1, 2**63 - 1]
        rows = []
        for run, count in lengths.items():
            for i in range(count):
                step = i
                if run == "odd":
                    step = rng.randrange(-5, 60)  # repeated and negative steps
                elif run == "edge":
                    step = rng.choice(edges)
                elif run == "flat":
                    step = 7  # kept positions that all fall on one step
                elif run == "pairs":
                    step = i // 2
                value = rng.choice([float("nan"), float("inf"), float("-inf"), 1.0, rng.random()])
                nan = value != value
                rows.append(("acc", 0.0 if nan else value, 1000 + rng.randrange(0, 40), step, nan, run))
            rows.append(("other", 1.0, 1, 1, False, run))
        values = b",".join(cur.mogrify("(%s, %s, %s, %s, %s, %s)", row) for row in rows).decode()
        cur.execute(f"INSERT INTO metrics VALUES {values} ON CONFLICT DO NOTHING")
    yield url, conn, list(lengths)
    conn.close()


@pytest.mark.parametrize("n, steps", [(1, None), (2, None), (3, None), (8, None), (320, None), (2500, None),
                                      (7, (0, 5)), (320, (3, 2000)), (4, (-2, 10)), (5, (9000, 9001)),
                                      (3, (-2**63 + 1, 0)), (5, (-1, 2**63 - 1))])
def test_the_chart_sample_is_mlflows(metrics_table, n, steps):
    """One query for every run gives what MLflow's store gives sampling each run alone."""
    from mlflow.protos.service_pb2 import GetMetricHistoryBulkInterval
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils.proto_json_utils import message_to_json
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from mlflow_gcp.server import chart

    url, conn, runs = metrics_table
    runs = [runs[-1], "missing", *runs[:-1]]  # the request's order, not the table's
    start, end = steps or (None, None)
    store = SqlAlchemyStore.__new__(SqlAlchemyStore)  # only its sampling, on this bare table
    store.db_type = "postgresql"
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            sampled = [m for run in runs
                       for m in store._sample_metric_history_single_run(session, run, "acc", n, start, end)]
    finally:
        engine.dispose()
    expected = GetMetricHistoryBulkInterval.Response()
    expected.metrics.extend([m.to_proto() for m in sampled])
    got = chart.read(conn, {"runs": runs, "key": "acc", "n": n, "start": start, "end": end})
    assert got.decode() == message_to_json(expected, pretty=False)


def test_the_uis_chart_path_is_answered_here():
    from mlflow_gcp.server import history

    assert "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval" in history._routes(
        "get_metric_history_bulk_interval_handler")
    assert "/api/2.0/mlflow/metrics/get-history" in history._routes("_get_metric_history")


class _Store:
    """What chart.answer uses of MLflow's store: its session maker and its engine (pool)."""

    def __init__(self, url: str, pool_size: int):
        from sqlalchemy import create_engine

        self.engine = create_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=5)
        self.checkouts = 0

    def ManagedSessionMaker(self):  # noqa: N802 (MLflow's name)
        from contextlib import contextmanager

        from sqlalchemy.orm import Session

        @contextmanager
        def session():
            with Session(self.engine) as s:
                self.checkouts += 1
                yield s

        return session()


@pytest.mark.parametrize("pool_size, split", [(1, False), (2, True), (5, True)])
def test_a_chart_of_many_runs_is_read_in_two_halves_when_the_pool_has_room(metrics_table, pool_size, split):
    from mlflow_gcp.server import chart

    url, conn, runs = metrics_table
    request = {"runs": [runs[-1], "missing", *runs[:-1]], "key": "acc", "n": 7, "start": None, "end": None}
    store = _Store(url, pool_size)
    try:
        got = chart.answer(store, request)
        # The helper thread may still be checking its connection out and giving it back unused
        # (the caller read that half itself when the helper had not started: a loaded machine).
        for thread in threading.enumerate():
            if thread.name == "mlflow-gcp-chart":
                thread.join(10)
        assert store.engine.pool.checkedout() == 0  # both connections back in the pool
    finally:
        store.engine.dispose()
    assert got == chart.read(conn, request)
    assert store.checkouts == (2 if split else 1)


def test_a_few_runs_are_read_on_one_connection(metrics_table):
    from mlflow_gcp.server import chart

    url, conn, runs = metrics_table
    request = {"runs": runs[:chart.SPLIT_MIN - 1], "key": "acc", "n": 3, "start": None, "end": None}
    store = _Store(url, 5)
    try:
        assert chart.answer(store, request) == chart.read(conn, request)
    finally:
        store.engine.dispose()
    assert store.checkouts == 1


def test_the_second_half_is_read_by_the_caller_when_the_helper_has_no_connection_yet(metrics_table):
    """The helper thread waiting on the pool never holds the answer up: the caller reads that
    half itself, and the helper gives its connection back unused once it gets one."""
    import threading

    from mlflow_gcp.server import chart

    url, conn, runs = metrics_table
    request = {"runs": runs, "key": "acc", "n": 5, "start": None, "end": None}
    store = _Store(url, 2)
    gate = threading.Event()
    real = store.ManagedSessionMaker

    def held_in_helper():
        if threading.current_thread().name == "mlflow-gcp-chart":
            gate.wait(10)
        return real()

    store.ManagedSessionMaker = held_in_helper
    try:
        second = chart.Second(store, request)
        with real() as session:
            got = second.rows(session.connection().connection.dbapi_connection)
        gate.set()
        assert second.done.wait(10)
        assert second.result is None and second.error is None and second.taken
        assert store.engine.pool.checkedout() == 0
    finally:
        store.engine.dispose()
    with conn.cursor() as cur:
        cur.execute(chart.sql(request), request)
        assert got == cur.fetchall()


def test_an_error_on_the_second_connection_is_the_callers(metrics_table):
    """A failed read on the helper's connection fails the answer (then MLflow's own read answers)."""
    from mlflow_gcp.server import chart

    url, _, runs = metrics_table
    store = _Store(url, 2)
    request = {"runs": runs, "key": "acc", "n": 5, "start": None, "end": None}
    try:
        second = chart.Second(store, {**request, "key": None, "n": "not a number"})
        assert second.done.wait(10)
        with store.ManagedSessionMaker() as session:
            with pytest.raises(Exception):
                second.rows(session.connection().connection.dbapi_connection)
    finally:
        store.engine.dispose()
