"""MLflow 3 tracing through MLflow's own client: trace ingest and search_traces.

Ingest: client processes run `@mlflow.trace`-decorated functions (a root span with nested
children, one of them an `mlflow.start_span` block): SPANS_PER_TRACE spans per trace, exported by
MLflow's client as it ships (async export on, its batch span processor: OTLP /v1/traces posts of
up to 5 spans, then StartTraceV3 once the root span ends). Each process makes one untimed trace
and flushes it; then all start together, make their traces and call
`mlflow.flush_trace_async_logging()`. The figure is the spans that really arrived (counted in the
server's database, spans table) over the time from the start to the last process's flush.
Spans that never arrived count as errors: the client's export swallows failures (it logs them),
so a server that drops spans cannot look fast. Over the same interval it also measures CPU per
trace: the client processes' own (each reports its process_time from the start to its flush),
the server tree's and its PostgreSQL backends' (bench/servers.py).

The traces per process stay under what the client's default queues hold (2,048 spans in its span
processor, 1,000 export tasks): nothing is discarded on the client side.

A failure in one process (setup, import, export) ends the load at once and is counted, instead of
leaving the others waiting at a barrier.

search_traces: `MlflowClient.search_traces(locations=[experiment], max_results=100)` as a user
calls it (spans included: one search request, then the client's batch-get requests), over the
traces the ingest left behind (bench/clients.py runs it).
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_mod
import threading
import time

import psycopg2

from bench import clients as clients_mod
from bench.loads import Result
from bench.servers import PG, Server, cpu_spent

SPANS_PER_TRACE = 8
# Per process: its traces x SPANS_PER_TRACE stay below the client's span queue (2,048).
MAX_TRACES_PER_PROCESS = 200
SETUP_TIMEOUT = 300.0  # imports and one warm-up trace per process on a busy machine (as bench/clients.py)


def _traced_functions():
    import mlflow

    @mlflow.trace(span_type="RETRIEVER")
    def retrieve(question: str) -> list[dict]:
        with mlflow.start_span("embed", span_type="EMBEDDING") as span:
            span.set_inputs({"text": question})
            span.set_outputs({"dims": 8})
        return [{"doc": f"doc-{k}", "score": 1.0 / (k + 1)} for k in range(3)]

    @mlflow.trace(span_type="TOOL")
    def tool(name: str, arg: int) -> dict:
        return {"tool": name, "result": arg * 2}

    @mlflow.trace(span_type="LLM")
    def llm(prompt: str, docs: list[dict]) -> str:
        return f"answer to {prompt!r} from {len(docs)} documents"

    @mlflow.trace(span_type="PARSER")
    def parse(text: str) -> dict:
        return {"text": text, "length": len(text)}

    @mlflow.trace(name="agent", span_type="AGENT")
    def agent(question: str, n: int) -> dict:
        docs = retrieve(question)
        calls = [tool(f"t{k}", n + k) for k in range(3)]
        return parse(llm(question, docs)) | {"calls": len(calls)}

    return agent  # agent, retrieve, embed, 3 tools, llm, parse: SPANS_PER_TRACE spans


def traced_client(base: str, experiment_id: str):
    """This process's MLflow client set up as a user's traced job is (retries off): the traced
    function, whose traces MLflow exports to `base`, experiment `experiment_id`."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    mlflow.set_tracking_uri(base)
    mlflow.set_experiment(experiment_id=experiment_id)
    return _traced_functions()


def flush() -> None:
    """Wait until MLflow's client has sent every trace made so far (its async export queue)."""
    import mlflow

    mlflow.flush_trace_async_logging()


def _process(base, experiment_id, threads, traces_per_client, deadline_s, go, results):
    """One client process: report ("ready", 0, 0, 0) after a flushed warm-up trace, wait for `go`,
    then ("done", traces made, errors, its CPU seconds from `go` to its flush) or ("failed",
    message) at any point."""
    try:
        agent = traced_client(base, experiment_id)
        agent("warm-up", -1)
        flush()
    except Exception as err:
        results.put(("failed", f"setup: {type(err).__name__}: {err}"))
        return
    results.put(("ready", 0, 0, 0.0))
    if not go.wait(SETUP_TIMEOUT):
        return
    cpu_began = time.process_time()  # the whole process: its export threads work for the traces too
    stop_at = time.perf_counter() + deadline_s
    made = [0] * threads
    errors = [0] * threads

    def loop(n):
        for i in range(traces_per_client):
            if time.perf_counter() > stop_at:
                break
            try:
                agent(f"question {n}-{i}", i)
                made[n] += 1
            except Exception:  # counted: a benchmark reports failures, never hides them
                errors[n] += 1

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    try:
        flush()
    except Exception as err:
        results.put(("failed", f"flush: {type(err).__name__}: {err}"))
        return
    results.put(("done", sum(made), sum(errors), time.process_time() - cpu_began))


def stored_spans(database: str, experiment_id: str) -> int:
    """Spans the server stored for the experiment."""
    conn = psycopg2.connect(dbname=database, **PG)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM spans WHERE experiment_id = %s", (int(experiment_id),))
            return cur.fetchone()[0]
    finally:
        conn.close()


def ingest(server: Server, experiment_id: str, clients: int, traces_per_client: int,
           deadline_s: float) -> tuple[Result, dict[str, float]]:
    """`clients` threads over up to bench/clients.py's MAX_PROCESSES processes making traces into
    `server`; ops = spans arrived. Also CPU ms per trace made: {"client", "server", "database"}."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no state from the bench
    per_proc = clients_mod.threads_per_process(clients)
    traces_per_client = min(traces_per_client, MAX_TRACES_PER_PROCESS // max(per_proc))
    go = ctx.Event()
    results = ctx.Queue()
    children = [ctx.Process(target=_process, args=(server.url, experiment_id, threads, traces_per_client,
                                                   deadline_s, go, results), daemon=True)
                for threads in per_proc]
    for child in children:
        child.start()
    errors = 0
    try:
        _collect(results, children, "ready", SETUP_TIMEOUT)
        before = stored_spans(server.database, experiment_id)
        cpu_before = server.cpu_seconds()
        began = time.perf_counter()
        go.set()
        made, errs, client_cpu = _collect(results, children, "done", deadline_s + 120)
        seconds = time.perf_counter() - began
        server_cpu, db_cpu = cpu_spent(cpu_before, server.cpu_seconds())
        errors += errs
    except RuntimeError as err:
        print(f"trace ingest failed: {err}", flush=True)
        return Result(ops=0, seconds=0.0, errors=errors + 1, latencies=[]), {}
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
    after = stored_spans(server.database, experiment_id)
    arrived = after - before
    errors += max(0, made * SPANS_PER_TRACE - arrived)  # exported spans that never arrived
    per_trace = {part: cpu / made * 1000 if made else float("nan")
                 for part, cpu in (("client", client_cpu), ("server", server_cpu), ("database", db_cpu))}
    return Result(ops=arrived, seconds=seconds, errors=errors, latencies=[], client_cpu=client_cpu), per_trace


def _collect(results, children, kind: str, timeout: float) -> tuple[int, int, float]:
    """One `kind` message per child; sums of their three counts. RuntimeError at the first
    failure, at a child that died, or after `timeout`."""
    got, sums = 0, [0, 0, 0.0]
    deadline = time.monotonic() + timeout
    while got < len(children):
        try:
            message = results.get(timeout=1.0)
        except queue_mod.Empty:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no '{kind}' from {len(children) - got} process(es) after {timeout:.0f} s")
            if any(not c.is_alive() and c.exitcode not in (0, None) for c in children):
                raise RuntimeError(f"a client process died (exit codes {[c.exitcode for c in children]})")
            continue
        if message[0] == "failed":
            raise RuntimeError(message[1])
        if message[0] != kind:
            raise RuntimeError(f"unexpected {message!r} waiting for '{kind}'")
        got += 1
        sums = [total + part for total, part in zip(sums, message[1:])]
    return tuple(sums)
