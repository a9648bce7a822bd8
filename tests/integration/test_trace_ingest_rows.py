"""Trace ingest as MLflow's client sends it (OTLP span batches, then StartTraceV3) leaves in our
store exactly the rows MLflow's store leaves: every row of every table MLflow's models give that
holds trace data, on real PostgreSQL. Also: two exports of spans of the same trace at once lose
and duplicate nothing."""

from __future__ import annotations

import json
import threading

import pytest

from mlflow_gcp.server import store as store_mod

from tests.support.otlp_values import set_value
from tests.support.store_pair import mlflows_and_ours

T0_NS = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def stores(new_database, tmp_path_factory):
    """(MLflow's store, ours, their artifact roots) on two fresh databases."""
    root = tmp_path_factory.mktemp("ingest-rows")
    with mlflows_and_ours(new_database, root, "ingest") as (stock, ours):
        yield stock, ours, (str(root / "stock"), str(root / "ours"))


def otlp_span(trace_hex: str, span_hex: str, parent_hex: str | None, name: str, start: int, end: int,
              attributes: dict, status: int = 1, events: list | None = None):
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    span = ProtoSpan(trace_id=bytes.fromhex(trace_hex), span_id=bytes.fromhex(span_hex), name=name,
                     start_time_unix_nano=start, end_time_unix_nano=end)
    if parent_hex:
        span.parent_span_id = bytes.fromhex(parent_hex)
    for key, v in attributes.items():
        kv = span.attributes.add()
        kv.key = key
        set_value(kv.value, v)
    span.status.code = status
    if status == Status.STATUS_CODE_ERROR:
        span.status.message = "boom"
    for ev_name, ev_time, ev_attrs in events or []:
        ev = span.events.add(name=ev_name, time_unix_nano=ev_time)
        for key, v in ev_attrs.items():
            kv = ev.attributes.add()
            kv.key = key
            set_value(kv.value, v)
    return span


def resource(service: str | None):
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    res = Resource()
    for key, v in {"telemetry.sdk.language": "python", "service.name": service}.items():
        if v is not None:
            kv = res.attributes.add()
            kv.key = key
            kv.value.string_value = v
    return res


def trace_case(k: int, base: int = 0) -> tuple[str, list[list], dict]:
    """(trace hex id, OTLP span batches in the order the client posts them, start_trace's fields)
    for case k (ids from base + k): the shapes the client sends (children first, the root last),
    with token usage, cost, session and user ids, trace tags on the root, an error, events,
    unicode."""
    n = k % 8
    ident = base + k + 1
    trace_hex = f"{ident:032x}"
    root_hex = f"{ident * 100:016x}"
    at = T0_NS + n * 10**9
    j = json.dumps
    children = []
    for c in range(1 + n % 4):
        attrs = {"mlflow.spanType": j("TOOL" if c % 2 else "LLM"), "mlflow.spanInputs": j({"x": c, "q": f"é日本 50% %s {n}"}),
                 "mlflow.spanOutputs": j([c, n]), "mlflow.traceRequestId": j(f"tr-{trace_hex}")}
        if n % 3 == 0:
            attrs["mlflow.chat.tokenUsage"] = j({"input_tokens": 10 + c, "output_tokens": 5, "total_tokens": 15 + c})
            attrs["mlflow.llm.cost"] = j({"input_cost": 0.25 * c, "output_cost": 0.5, "total_cost": 0.5 + 0.25 * c})
            attrs["mlflow.llm.model"] = j("gpt-x")
            attrs["mlflow.llm.provider"] = j("openai")
        if n % 4 == 1 and c == 0:
            attrs["session.id"] = j(f"sess-{n}")
            attrs["user.id"] = j(f"user-{n}")
        events = [("exception", at + 500, {"exception.message": "bad", "exception.type": "ValueError"})] if c == 2 else None
        children.append(otlp_span(trace_hex, f"{ident * 100 + c + 1:016x}", root_hex, f"child-{c}",
                                  at + 1000 * (c + 1), at + 1000 * (c + 2), attrs, events=events))
    root_attrs = {"mlflow.spanType": j("AGENT"), "mlflow.spanInputs": j({"question": f"q{n}"}),
                  "mlflow.spanOutputs": j({"answer": f"a{n}"}), "mlflow.traceRequestId": j(f"tr-{trace_hex}"),
                  "mlflow.traceTag.case": f"c{n}", "mlflow.traceTag.group": "ab"[n % 2]}
    root = otlp_span(trace_hex, root_hex, None, f"root-{n}", at, at + 10**6 * (n + 1), root_attrs,
                     status=2 if n == 3 else 1)
    batches = [children[:2], children[2:] + [root]] if len(children) > 2 else [children, [root]]
    info = {"request_time": at // 10**6, "execution_duration": n + 1, "state": "ERROR" if n == 3 else "OK",
            "tags": {"case": f"c{n}", "group": "ab"[n % 2], "mlflow.traceName": f"root-{n}"},
            "metadata": {"m": str(n % 3), "mlflow.trace_schema.version": "3",
                         "mlflow.traceInputs": j({"question": f"q{n}"})[:250],
                         "mlflow.traceOutputs": j({"answer": f"a{n}"})[:250],
                         **({"mlflow.trace.session": f"sess-{n}", "mlflow.trace.user": f"user-{n}"} if n % 4 == 1 else {}),
                         **({"mlflow.trace.tokenUsage": j({"input_tokens": 10, "output_tokens": 5, "total_tokens": 15})}
                            if n % 3 == 0 else {})},
            "preview": (j({"question": f"q{n}"}), j({"answer": f"a{n}"}))}
    return trace_hex, [b for b in batches if b], info


def log_batch(store, exp: str, spans: list, service: str | None):
    """What MLflow's OTLP handler hands the store for one post (server/otel_api.py)."""
    from mlflow.entities import Span

    res = resource(service)
    store.log_spans(exp, [Span.from_otel_proto(p, resource=res) for p in spans])


def start_trace(store, exp: str, trace_hex: str, info: dict):
    from mlflow.entities import TraceInfo, TraceLocation, TraceState

    return store.start_trace(TraceInfo(
        trace_id=f"tr-{trace_hex}", trace_location=TraceLocation.from_experiment_id(exp),
        request_time=info["request_time"], execution_duration=info["execution_duration"],
        state=TraceState(info["state"]), request_preview=info["preview"][0], response_preview=info["preview"][1],
        trace_metadata=info["metadata"], tags=info["tags"]))


def trace_tables():
    """Every table of MLflow's models that holds trace or span data."""
    from mlflow.store.db.base_sql_model import Base

    import mlflow.store.tracking.dbmodels.models  # noqa: F401  (registers the models)

    names = []
    for table in Base.metadata.sorted_tables:
        cols = set(table.columns.keys())
        if cols & {"request_id", "trace_id"} or "trace" in table.name or "span" in table.name:
            names.append(table.name)
    return sorted(names)


def dump(store, artifact_root: str) -> dict:
    from sqlalchemy import text

    out = {}
    with store.engine.connect() as conn:
        for name in trace_tables():
            exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": name}).scalar()
            if exists is None:
                continue
            rows = conn.execute(text(f'SELECT * FROM "{name}"')).mappings().all()
            out[name] = sorted((json.dumps(dict(r), default=str, sort_keys=True).replace(artifact_root, "ROOT")
                                for r in rows))
    return out


def ingest(store, name: str, order: str, base: int) -> list:
    """All cases into a new experiment: spans before start_trace (the client's order), or
    start_trace first, or spans only. Returns start_trace's answers (as dicts)."""
    exp = store.create_experiment(name)
    answers = []
    for n in range(8):
        trace_hex, batches, info = trace_case(n, base)
        if order == "start_first":
            answers.append(start_trace(store, exp, trace_hex, info).to_dict())
        for batch in batches:
            log_batch(store, exp, batch, "agent-svc" if n % 2 else None)
        if order == "spans_first":
            answers.append(start_trace(store, exp, trace_hex, info).to_dict())
    return answers


@pytest.fixture
def our_paths(monkeypatch):
    """Counts of our span upserts, light experiment reads (server/trace_writes.py) and plain
    log_spans (server/trace_spans.py) and start_trace (server/trace_start.py)."""
    from mlflow_gcp.server import trace_spans, trace_start, trace_writes

    seen = {"upserts": 0, "experiments": 0, "bumps": 0, "found": 0, "not_found": 0, "plain": 0,
            "plain_found": 0, "plain_new": 0}
    upsert, execute, aggregates = trace_writes.upsert_statements, store_mod._execute_plain, trace_spans._aggregates

    def counting_upsert(*args):
        seen["upserts"] += args[0].name == "spans"  # log_spans' (start_trace upserts tags, metadata)
        return upsert(*args)

    def counting_aggregates(*args):
        seen["plain"] += 1
        return aggregates(*args)

    def counting_execute(session, statement, params=None):
        seen["experiments"] += statement in (trace_writes.EXPERIMENT_ROW, trace_start.EXPERIMENT_AND_TRACE)
        # alone, or last of several; the plain start_trace's first round trip bumps where it locked
        seen["bumps"] += trace_writes.BUMP_GENERATIONS in statement and statement != trace_start.EXPERIMENT_AND_TRACE
        result = execute(session, statement, params)
        if statement == trace_writes.TRACE_EXISTS:  # start_trace's look for its trace row
            rows = result.fetchall()
            seen["found" if rows else "not_found"] += 1
            return _Rows(rows)
        if statement == trace_start.EXPERIMENT_AND_TRACE:  # the plain start_trace's first statement
            rows = result.fetchall()
            if rows:
                seen["plain_found" if rows[0][-1] else "plain_new"] += 1
                seen["bumps"] += rows[0][-2]
            return _Rows(rows)
        return result

    monkeypatch.setattr(trace_writes, "upsert_statements", counting_upsert)
    monkeypatch.setattr(store_mod, "_execute_plain", counting_execute)
    monkeypatch.setattr(trace_spans, "_aggregates", counting_aggregates)
    return seen


class _Rows:
    """The rows of a result the counting wrapper read."""

    def __init__(self, rows):
        self.rows = rows

    def first(self):
        return self.rows[0] if self.rows else None


ORDERS = ["spans_first", "start_first", "spans_only"]


@pytest.mark.parametrize("order", ORDERS)
def test_ingest_leaves_mlflows_rows(stores, order, our_paths):
    stock, ours, (stock_root, ours_root) = stores
    base = 100 * (1 + ORDERS.index(order))
    stock_answers = ingest(stock, f"rows-{order}", order, base)
    assert set(our_paths.values()) == {0}  # MLflow's store keeps its own code
    answers = ingest(ours, f"rows-{order}", order, base)
    assert (json.dumps(answers, sort_keys=True).replace(ours_root, "ROOT")
            == json.dumps(stock_answers, sort_keys=True).replace(stock_root, "ROOT"))
    assert len(answers) == (0 if order == "spans_only" else 8)
    # the plain start_trace (server/trace_start.py) ran: its conflict path when the spans came
    # first, its new-trace path when start_trace comes first; MLflow's method did not run
    assert (our_paths["plain_found"], our_paths["plain_new"]) == {"spans_first": (8, 0), "start_first": (0, 8),
                                                                   "spans_only": (0, 0)}[order]
    assert (our_paths["found"], our_paths["not_found"]) == (0, 0)
    batches = sum(len(trace_case(n, base)[1]) for n in range(8))
    assert our_paths["upserts"] == our_paths["plain"] == batches
    # the payload generation bump: once per log_spans, once per start_trace that finds its trace
    assert our_paths["bumps"] == batches + (8 if order == "spans_first" else 0)
    # one per start_trace, one per log_spans that creates its trace
    assert our_paths["experiments"] == {"spans_first": 16, "start_first": 8, "spans_only": 8}[order]
    expected, got = dump(stock, stock_root), dump(ours, ours_root)
    assert {"spans", "trace_info", "trace_tags", "trace_request_metadata"} <= set(expected)
    assert any(expected["spans"]) and any(expected["trace_request_metadata"])
    for table in expected:
        assert got[table] == expected[table], f"{table} differs"


def test_concurrent_exports_of_one_trace_lose_nothing(stores, our_paths):
    """Both batches of each trace posted at once (two threads), then start_trace: every span is
    stored once and the trace rows are what MLflow's store leaves after the same exports."""
    stock, ours, (stock_root, ours_root) = stores
    results = {}
    for label, store in (("stock", stock), ("ours", ours)):
        exp = store.create_experiment("concurrent")
        errors = []
        for n in range(12):
            trace_hex, batches, info = trace_case(n, 1000)
            if len(batches) < 2:
                batches = [batches[0][:1], batches[0][1:]]
            barrier = threading.Barrier(len(batches))

            def post(batch):
                try:
                    barrier.wait(10)
                    log_batch(store, exp, batch, "svc")
                except Exception as err:  # reported below
                    errors.append(err)

            threads = [threading.Thread(target=post, args=(b,)) for b in batches]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            start_trace(store, exp, trace_hex, info)
        assert not errors, errors
        results[label] = dump(store, stock_root if label == "stock" else ours_root)
    spans = [json.loads(r) for r in results["ours"]["spans"] if json.loads(r)["experiment_id"] == int(exp)]
    keys = [(s["trace_id"], s["span_id"]) for s in spans]
    assert len(keys) == len(set(keys)) == sum(len(b) for n in range(12) for b in trace_case(n, 1000)[1])
    assert our_paths["plain"] >= 24  # every export of ours took the plain path
    assert results["ours"] == results["stock"]



def refusals(store, root: str) -> list:
    """MLflow's answers to trace writes into an experiment that is missing or deleted, or not an
    id at all (the experiment read raises them)."""
    deleted = store.create_experiment("deleted-for-traces")
    store.delete_experiment(deleted)
    out = []
    for n, (exp, start_first) in enumerate([("987654", False), ("987654", True), (deleted, True), ("nope", False)]):
        trace_hex, batches, info = trace_case(n, 2000)
        try:
            if start_first:
                start_trace(store, exp, trace_hex, info)
            else:
                log_batch(store, exp, batches[0], None)
            out.append("accepted")
        except Exception as err:
            out.append((type(err).__name__, getattr(err, "error_code", None), str(err).replace(root, "ROOT")))
    return out


def test_trace_writes_to_missing_or_deleted_experiments_fail_as_mlflows(stores):
    stock, ours, (stock_root, ours_root) = stores
    expected = refusals(stock, stock_root)
    assert expected[0][1] == "RESOURCE_DOES_NOT_EXIST" and expected[2][1] == "INVALID_PARAMETER_VALUE"
    assert refusals(ours, ours_root) == expected


def spans_elsewhere(store, root: str) -> list:
    """MLflow's answers to spans and start_trace for traces whose spans MLflow keeps outside the
    tracking store (its spans-location tag), and the trace rows after them."""
    from sqlalchemy import text

    exp = store.create_experiment("spans-elsewhere")
    out = []
    for n, location in enumerate(["ARTIFACT_REPO", "ARCHIVE_REPO", "TRACKING_STORE"]):
        trace_hex, batches, info = trace_case(n, 3000)
        log_batch(store, exp, batches[0], None)
        with store.engine.begin() as conn:
            conn.execute(text('INSERT INTO trace_tags (request_id, "key", "value") VALUES (:r, :k, :v) '
                              'ON CONFLICT (request_id, "key") DO UPDATE SET "value" = EXCLUDED."value"'),
                         {"v": location, "r": f"tr-{trace_hex}", "k": "mlflow.trace.spansLocation"})
        for write in (lambda: log_batch(store, exp, batches[-1], None), lambda: start_trace(store, exp, trace_hex, info)):
            try:
                write()
                out.append("accepted")
            except Exception as err:
                out.append((type(err).__name__, getattr(err, "error_code", None), str(err).replace(root, "ROOT")))
    return out


def test_writes_to_traces_whose_spans_are_elsewhere_fail_as_mlflows(stores, our_paths):
    stock, ours, (stock_root, ours_root) = stores
    expected = spans_elsewhere(stock, stock_root)
    assert expected.count("accepted") < len(expected)
    assert spans_elsewhere(ours, ours_root) == expected
    assert our_paths["bumps"] > 0
    got, want = dump(ours, ours_root), dump(stock, stock_root)
    assert got == want


def mixed_batches(store, base: int) -> list:
    """Batches MLflow's client does not send but log_spans takes: several traces in one batch,
    some new, some with spans stored (usage and cost recomputed over them), one started first
    (finalized, authoritative usage); a root with a trace name and a tag that a resource attribute
    also sets, resource attributes of other types and reserved ones, user ids known and not.
    Returns what each call answered."""
    from mlflow.entities import Span
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    exp = store.create_experiment("mixed")
    cases = [trace_case(n, base) for n in range(8)]
    start_trace(store, exp, cases[6][0], cases[6][2])  # n=6: usage, started first
    for trace_hex, batches, _ in cases[:4]:
        log_batch(store, exp, batches[0], "first")  # stored spans for the recompute
    res = Resource()
    for key, v in {"service.name": "multi", "mlflow.trace.spansLocation": "ARTIFACT_REPO", "case": "from-resource",
                   "telemetry.sdk.name": "x", "deploy.replicas": 3, "deploy.canary": True}.items():
        set_value(res.attributes.add(key=key).value, v)
    j = json.dumps
    named = otlp_span(f"{base + 99:032x}", f"{(base + 99) * 100:016x}", None, "named", T0_NS, T0_NS + 10**6,
                      {"mlflow.spanType": j("CHAIN"), "mlflow.traceTag.mlflow.traceName": "my name",
                       "mlflow.traceTag.case": "from-root", "user.id": j("u-named"), "session.id": j("s-named"),
                       "mlflow.chat.tokenUsage": j({"input_tokens": 3, "output_tokens": 4, "total_tokens": 7})})
    spans = [p for _, batches, _ in cases for p in batches[-1]] + [named]
    answers = []
    for chunk in (spans[: len(spans) // 2], spans[len(spans) // 2:], spans[:3]):  # the last one again
        answers.append([s.span_id for s in store.log_spans(exp, [Span.from_otel_proto(p, resource=res)
                                                                  for p in chunk])])
    return answers


def test_multi_trace_batches_leave_mlflows_rows(stores, our_paths):
    stock, ours, (stock_root, ours_root) = stores
    expected = mixed_batches(stock, 5000)
    assert our_paths["plain"] == 0
    assert mixed_batches(ours, 5000) == expected
    assert our_paths["plain"] == 4 + 3
    got, want = dump(ours, ours_root), dump(stock, stock_root)
    assert any("my name" in row for row in want["trace_info"])
    assert got == want


def test_mlflows_path_when_the_plain_one_does_not_apply(stores, our_paths, monkeypatch):
    """With rollups on (as MLflow's switch would say), or MLflow's code not the one followed,
    MLflow's own _log_spans_once runs, with the same rows."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from mlflow_gcp.server import trace_spans

    stock, ours, (stock_root, ours_root) = stores
    writer = type(ours)._span_writer
    assert writer is not None
    monkeypatch.setattr(writer.ns, "rollups_enabled", lambda: True)
    ingest(stock, "fallback", "spans_first", 6000)
    ingest(ours, "fallback", "spans_first", 6000)
    assert our_paths["plain"] == 0 and our_paths["upserts"] > 0  # MLflow's, with our span upsert
    assert dump(ours, ours_root) == dump(stock, stock_root)
    monkeypatch.setitem(trace_spans.COPIED, "_stored_span_rows_query", "0" * 64)
    assert trace_spans.writer(SqlAlchemyStore, None, None, None) is None


# start_trace as plain statements (server/trace_start.py): each case runs the same writes on
# MLflow's store and ours and compares start_trace's answers (or errors) and every trace row.

def _outcome(store, root: str, write) -> object:
    try:
        answer = write()
    except Exception as err:
        return (type(err).__name__, getattr(err, "error_code", None), str(err).replace(root, "ROOT"))
    return json.loads(json.dumps(answer.to_dict(), sort_keys=True).replace(root, "ROOT"))


def _on_both(stores, scenario) -> list:
    """scenario(store, write) on MLflow's store, then ours (`write(fn)` records fn's answer or
    error); asserts equal outcomes and rows, returns MLflow's outcomes."""
    stock, ours, (stock_root, ours_root) = stores
    outcomes = {}
    for label, store, root in (("stock", stock, stock_root), ("ours", ours, ours_root)):
        out = []
        scenario(store, lambda fn, store=store, root=root, out=out: out.append(_outcome(store, root, fn)))
        outcomes[label] = out
    for got, want in zip(outcomes["ours"], outcomes["stock"]):
        assert got == want, {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)} if isinstance(got, dict) and isinstance(want, dict) else (got, want)
    assert outcomes["ours"] == outcomes["stock"]
    assert dump(ours, ours_root) == dump(stock, stock_root)
    return outcomes["stock"]


def _assessments(trace_id: str, base: int, value=True):
    from mlflow.entities import AssessmentSource, Expectation, Feedback

    feedback = Feedback(name="quality", value=value, source=AssessmentSource("HUMAN", "me@x"), trace_id=trace_id,
                        rationale="ok", metadata={"k": "v"}, create_time_ms=1_700_000_000_000 + base,
                        last_update_time_ms=1_700_000_000_500 + base)
    feedback.assessment_id = f"a-{base}-1"
    expectation = Expectation(name="answer", value={"text": "42"}, source=AssessmentSource("CODE", "t"),
                              trace_id=None, create_time_ms=1_700_000_000_001 + base,
                              last_update_time_ms=1_700_000_000_001 + base)
    expectation.assessment_id = f"a-{base}-2"
    return [feedback, expectation]


def _start(store, exp, trace_hex, info, assessments=(), **changes):
    from mlflow.entities import TraceInfo, TraceLocation, TraceState

    fields = dict(trace_id=f"tr-{trace_hex}", trace_location=TraceLocation.from_experiment_id(exp),
                  request_time=info["request_time"], execution_duration=info["execution_duration"],
                  state=TraceState(info["state"]), request_preview=info["preview"][0],
                  response_preview=info["preview"][1], trace_metadata=dict(info["metadata"]),
                  tags=dict(info["tags"]), assessments=list(assessments))
    fields.update(changes)
    return store.start_trace(TraceInfo(**fields))


def test_plain_start_trace_with_assessments_overlaps_and_analytics(stores, our_paths):
    """Conflict path (spans first) and new path (start_trace first), with assessments, tags and
    metadata overlapping what log_spans wrote, promoted keys (tokens, cost, session), and
    start_trace twice (assessments updated, previews kept when not sent)."""
    j = json.dumps

    def scenario(store, write):
        exp = store.create_experiment("plain-start")
        for n in range(8):
            trace_hex, batches, info = trace_case(n, 14000)
            info = dict(info, tags={**info["tags"], "case": "from-start", "extra": "x" * 300},
                        metadata={**info["metadata"], "m": "from-start",
                                  "mlflow.trace.session": f"s-{n}",
                                  "mlflow.trace.tokenUsage": j({"input_tokens": 7 * n, "output_tokens": 3,
                                                                "total_tokens": 7 * n + 3}),
                                  "mlflow.trace.cost": j({"input_cost": 0.1 * n, "output_cost": 1e-9,
                                                          "total_cost": 0.1 * n + 1e-9})})
            assessments = _assessments(f"tr-{trace_hex}", 10 * n) if n % 2 else []
            if n < 5:
                for batch in batches:
                    log_batch(store, exp, batch, None)
                write(lambda: _start(store, exp, trace_hex, info, assessments))
            else:
                write(lambda: _start(store, exp, trace_hex, info, assessments))
                for batch in batches:
                    log_batch(store, exp, batch, None)
            # again: an assessment changed, no previews, no trace name, other analytics
            write(lambda: _start(store, exp, trace_hex, dict(info, tags={"case": "again"},
                                                             metadata={"mlflow.trace.cost": j({"total_cost": 2.5})}),
                                 _assessments(f"tr-{trace_hex}", 10 * n, value=0.5)[:1],
                                 request_preview=None, response_preview=None, execution_duration=None))

    outcomes = _on_both(stores, scenario)
    assert all(isinstance(o, dict) for o in outcomes) and any(o.get("assessments") for o in outcomes)
    assert (our_paths["plain_found"], our_paths["plain_new"]) == (13, 3)


def test_plain_start_trace_refusals(stores, our_paths):
    """MLflow's errors: an invalid (too long) trace name, a deleted experiment after the spans,
    a trace whose spans live elsewhere (checked by the spans-elsewhere test too)."""
    from sqlalchemy import text

    def scenario(store, write):
        exp = store.create_experiment("plain-start-refusals")
        trace_hex, batches, info = trace_case(1, 15000)
        log_batch(store, exp, batches[0], None)
        write(lambda: _start(store, exp, trace_hex, dict(info, tags={"mlflow.traceName": "n" * 9000})))
        trace_hex, batches, info = trace_case(2, 15000)
        log_batch(store, exp, batches[0], None)
        with store.engine.begin() as conn:
            conn.execute(text('UPDATE trace_tags SET "value" = :v WHERE request_id = :r AND "key" = :k'),
                         {"v": "ARTIFACT_REPO", "r": f"tr-{trace_hex}", "k": "mlflow.trace.spansLocation"})
        write(lambda: _start(store, exp, trace_hex, info, _assessments(f"tr-{trace_hex}", 1)))
        trace_hex, batches, info = trace_case(3, 15000)
        log_batch(store, exp, batches[0], None)
        store.delete_experiment(exp)
        write(lambda: _start(store, exp, trace_hex, info))

    outcomes = _on_both(stores, scenario)
    assert [o[1] for o in outcomes] == ["INVALID_PARAMETER_VALUE", "INVALID_STATE", "INVALID_PARAMETER_VALUE"]
    assert our_paths["plain_found"] == 2  # the name is refused before any statement


def test_plain_start_trace_unbumped_takes_mlflows_bump(stores, our_paths, monkeypatch):
    """Where the plain bump (with the tags read) updates nothing, MLflow's bump runs on the same
    transaction (its readers and error when the trace is not bumped; here it is): same rows."""
    from mlflow_gcp.server import trace_writes

    bump = trace_writes.bump_generations
    calls = {"on": False, "n": 0}

    def first_misses(ids):
        statement, params = bump(ids)
        if calls["on"]:
            calls["n"] += 1
            if calls["n"] % 2:  # the plain path's; the next one is MLflow's (our store's) bump
                return statement, (["no-such-trace"], *params[1:])
        return statement, params

    monkeypatch.setattr(trace_writes, "bump_generations", first_misses)

    def scenario(store, write):
        exp = store.create_experiment("plain-start-unbumped")
        for n in range(3):
            trace_hex, batches, info = trace_case(n, 18000)
            for batch in batches:
                log_batch(store, exp, batch, None)
            calls["on"] = True
            write(lambda: _start(store, exp, trace_hex, info, _assessments(f"tr-{trace_hex}", 18000 + n)))
            calls["on"] = False

    _on_both(stores, scenario)
    assert calls["n"] == 6 and our_paths["plain_found"] == 3


def test_plain_start_trace_concurrent_with_log_spans_loses_nothing(stores, our_paths):
    """start_trace and the trace's last span post at once (threads): which commits first is a race
    (the trace's cost then differs, in MLflow's store too), but nothing either write sends is lost:
    every span once, start_trace's tags and metadata, the trace's fields."""
    _, ours, _ = stores
    exp = ours.create_experiment("plain-start-concurrent")
    errors = []
    cases = [trace_case(n, 16000) for n in range(10)]
    for trace_hex, batches, info in cases:
        for batch in batches[:-1]:
            log_batch(ours, exp, batch, None)
        barrier = threading.Barrier(2)

        def run(fn):
            try:
                barrier.wait(10)
                fn()
            except Exception as err:  # reported below
                errors.append(err)

        threads = [threading.Thread(target=run, args=(lambda: log_batch(ours, exp, batches[-1], "svc"),)),
                   threading.Thread(target=run, args=(lambda: _start(ours, exp, trace_hex, info),))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert our_paths["plain_found"] + our_paths["plain_new"] == 10
    for trace_hex, batches, info in cases:
        trace = ours.get_trace(f"tr-{trace_hex}")
        assert sorted(s.span_id for s in trace.data.spans) == sorted(p.span_id.hex() for b in batches for p in b)
        got = trace.info
        assert {k: got.tags.get(k) for k in info["tags"]} == info["tags"]
        assert got.trace_metadata["mlflow.trace_schema.version"] == "3" and got.trace_metadata["m"] == info["metadata"]["m"]
        assert got.trace_metadata["mlflow.trace.infoFinalized"] == "true"
        assert (got.request_time, got.execution_duration, got.state.value) == (
            info["request_time"], info["execution_duration"], info["state"])


def test_plain_start_trace_is_guarded(stores, our_paths, monkeypatch):
    """MLflow's own method runs where the plain one does not apply (rollups on) or its sources
    differ from the ones followed (then no plain starter is built at all)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from mlflow_gcp.server import trace_start

    stock, ours, (stock_root, ours_root) = stores
    exp = ours.create_experiment("plain-start-guard")
    trace_hex, batches, info = trace_case(0, 17000)
    log_batch(ours, exp, batches[0], None)
    monkeypatch.setenv("MLFLOW_SQL_TRACE_ROLLUPS_ENABLED", "true")
    _start(ours, exp, trace_hex, info)
    assert (our_paths["plain_found"], our_paths["found"]) == (0, 1)  # MLflow's path, with its row look
    monkeypatch.delenv("MLFLOW_SQL_TRACE_ROLLUPS_ENABLED")
    _start(ours, exp, trace_hex, info)
    assert (our_paths["plain_found"], our_paths["found"]) == (1, 1)

    execute, insert = store_mod._execute, store_mod._insert_rows
    assert trace_start.starter(SqlAlchemyStore, execute, insert) is not None
    name = "SqlAlchemyStore._start_trace_once"
    monkeypatch.setitem(trace_start.COPIED_SOURCES, name, "0" * 64)
    assert trace_start.starter(SqlAlchemyStore, execute, insert) is None

