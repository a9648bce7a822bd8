"""bench/replay.py against our real server on PostgreSQL: what it captures is what MLflow's own
client sends, and replaying it makes the server do that work (rows written, whole answers read)."""

from __future__ import annotations

import json
import time

import psycopg2
import pytest

from bench import history, replay, trace_replay, traces
from bench.servers import PG


@pytest.fixture(scope="module")
def server(start_server, new_database, tmp_path_factory):
    url = new_database("bench_replay")
    running = start_server({"DB_URI": url, "ARTIFACT_ROOT": str(tmp_path_factory.mktemp("artifacts"))})
    running.database = url.rsplit("/", 1)[1]
    return running


def _metrics(database: str, run_id: str) -> list[tuple]:
    conn = psycopg2.connect(dbname=database, **PG)
    try:
        with conn, conn.cursor() as cur:
            cur.execute('SELECT "key", "value", "timestamp", step FROM metrics WHERE run_uuid = %s '
                        'ORDER BY step, "key"', (run_id,))
            return cur.fetchall()
    finally:
        conn.close()


def test_log_batch_capture_is_the_clients_body_and_its_replay_writes_the_rows(server):
    from mlflow.entities import Metric

    with replay.Recorder(server.url, stub=(replay.LOG_BATCH,)) as rec:
        client = replay.client(rec.url)
        run_id = client.create_run(client.create_experiment(f"replay-{time.time_ns()}")).info.run_id
        rec.take()
        given = [Metric(f"m{k % 10}", k * 0.5 + 7, 1_700_000_000_000 + k, 700 + k) for k in range(100)]
        client.log_batch(run_id, metrics=given)
        seen = rec.take()

    assert [(c.method, c.target) for c in seen] == [("POST", replay.LOG_BATCH)]
    sent = json.loads(seen[0].body)
    assert sent["run_id"] == run_id
    assert [(m["key"], m["value"], int(m["timestamp"]), int(m["step"])) for m in sent["metrics"]] == \
        [(m.key, m.value, m.timestamp, m.step) for m in given]
    assert dict(seen[0].headers)["User-Agent"].startswith("mlflow-python-client")
    assert _metrics(server.database, run_id) == []  # the stub kept the write for the replay

    r = replay.replay(server.url, [[[*seen]]], per_conn=1, deadline_s=60, warm_up=0, repeat=False)
    assert (r.ops, r.errors) == (1, 0)
    assert r.client_cpu > 0
    assert _metrics(server.database, run_id) == sorted(
        ((m.key, m.value, m.timestamp, m.step) for m in given), key=lambda row: (row[3], row[0]))


def test_replay_counts_an_answer_that_is_not_the_captured_one(server):
    from mlflow.entities import Metric

    with replay.Recorder(server.url, stub=(replay.LOG_BATCH,)) as rec:
        replay.client(rec.url).log_batch("0" * 32, metrics=[Metric("m", 1.0, 1, 0)])  # no such run
        seen = rec.take()
    assert seen[0].status == 200  # the stub's
    r = replay.replay(server.url, [[seen]], per_conn=2, deadline_s=60, warm_up=0)
    assert (r.ops, r.errors) == (0, 2)


def test_paged_history_and_search_replay_whole_answers(server):
    client = replay.client(server.url)
    exp = client.create_experiment(f"replay-{time.time_ns()}")
    run_id = client.create_run(exp).info.run_id
    history._insert(server.database, run_id, "loss", 30_000)

    call = replay.capture(server.url, lambda c: c.get_metric_history(run_id, "loss"))
    pages = [c.target for c in call]
    assert len(pages) == 2 and "page_token" in pages[1]  # the client pages 25,000 points at a time
    assert all(c.method == "GET" and c.target.startswith("/api/2.0/mlflow/metrics/get-history?") for c in call)

    searched = replay.capture(server.url, lambda c: c.search_runs([exp], max_results=100))
    assert [(c.method, c.target) for c in searched] == [("POST", "/api/2.0/mlflow/runs/search")]
    assert json.loads(searched[0].body)["experiment_ids"] == [exp]

    r = replay.replay(server.url, [[call], [searched]], per_conn=3, deadline_s=120, warm_up=1)
    assert (r.ops, r.errors) == (6, 0)


def _stored_traces(database: str, experiment_id: str) -> dict[str, int]:
    """Trace id -> spans stored, for every trace row of the experiment."""
    conn = psycopg2.connect(dbname=database, **PG)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT t.request_id, (SELECT count(*) FROM spans s WHERE s.trace_id = t.request_id) "
                        "FROM trace_info t WHERE t.experiment_id = %s", (int(experiment_id),))
            return dict(cur.fetchall())
    finally:
        conn.close()


def _otlp_spans(body: bytes) -> list:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest.FromString(body)
    return [span for resource in request.resource_spans for scope in resource.scope_spans for span in scope.spans]


def test_trace_ingest_replays_each_captured_trace_as_a_new_one_with_all_its_spans(server):
    exp = replay.client(server.url).create_experiment(f"replay-{time.time_ns()}")
    captured = trace_replay.capture(server.url, exp, count=3)
    assert len(captured) == 3
    for call in captured:  # what MLflow's client sent: its span posts (all 8 spans) and one StartTraceV3
        posts = [c for c in call if c.target == trace_replay.SPANS]
        assert [c.target for c in call].count(trace_replay.START) == 1
        assert all(dict(c.headers)["Content-Type"] == "application/x-protobuf" and
                   dict(c.headers)["x-mlflow-experiment-id"] == exp for c in posts)
        assert sum(len(_otlp_spans(c.body)) for c in posts) == traces.SPANS_PER_TRACE
    stored = _stored_traces(server.database, exp)  # forwarded: the client got real answers
    assert len(stored) == 4  # the capture process's warm-up trace, then the three

    calls = trace_replay.new_traces(captured, connections=2, per_conn=3)
    new_ids = set()
    for n, per_conn in enumerate(calls):
        for k, call in enumerate(per_conn):
            was = captured[(n * 3 + k) % 3]
            new = trace_replay.trace_id(call)
            new_ids.add(f"tr-{new.hex()}")
            assert trace_replay.renamed(call, trace_replay.trace_id(was)) == was  # only the id changed
            spans = [span for c in call if c.target == trace_replay.SPANS for span in _otlp_spans(c.body)]
            assert len(spans) == traces.SPANS_PER_TRACE
            for span in spans:
                assert span.trace_id == new
                attrs = {a.key: a.value.string_value for a in span.attributes}
                assert attrs["mlflow.traceRequestId"] == f"tr-{new.hex()}"
    assert len(new_ids) == 6 and not new_ids & set(stored)

    r = replay.replay(server.url, calls, per_conn=3, deadline_s=120, warm_up=0, repeat=False)
    assert (r.ops, r.errors) == (6, 0)
    after = _stored_traces(server.database, exp)
    assert {t: after[t] for t in new_ids if t in after} == dict.fromkeys(new_ids, traces.SPANS_PER_TRACE)
    assert len(after) == len(stored) + 6


def test_capture_also_records_what_mlflow_sends_through_the_tracking_uri(server, tmp_path):
    # Some of MLflow's client code resolves mlflow-artifacts: URIs against the process's tracking
    # URI, not the client's (tracing/client.py does, for spans kept as an artifact: stock's
    # search_traces); capture must record those requests too.
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = replay.client(server.url)
    run = client.create_run(client.create_experiment(f"replay-{time.time_ns()}"))
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")

    call = replay.capture(server.url, lambda c: get_artifact_repository(run.info.artifact_uri)
                          .download_artifacts("note.txt", str(tmp_path)))
    assert ("GET", 200) in [(c.method, c.status) for c in call if c.target.endswith("/artifacts/note.txt")]
    assert (tmp_path / "note.txt").read_text() == "hello"


def test_a_capture_whose_client_call_fails_is_one_error_not_a_crash(server):
    # The client's own check fails (an empty experiment: 0 runs, not 100): the bench counts an
    # error for the row and goes on with the next one.
    exp = replay.client(server.url).create_experiment(f"replay-{time.time_ns()}")
    row = replay.search(server, "search_runs", exp, 4, 1, 10)
    assert (row.result.ops, row.result.errors) == (0, 1)
