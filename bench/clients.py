"""Loads driven through MLflow's own client: `MlflowClient` calls, as a training job makes them.

Why not hand-written REST bodies: a figure then holds only where the body is what MLflow's
client really sends (issue 13: a fast path missed the client's `run_uuid`, and the hand-written
body measured 0.03 of stock where the client got 0.39). Here the client builds every request.

Clients run in separate processes (a training job is one process; threads of one process would
share one GIL, and the client's own protobuf and JSON work would cap the load), up to
`MAX_PROCESSES`, each running one or more client threads. Each process creates its runs and makes
`WARM_UP` untimed calls per client (a fresh worker's first requests pay one-off costs), then all
start together and call up to `per_client` times or until the deadline. MLflow's client retries
are off, so a failure counts as an error instead of hiding as latency. Each process also counts
its own CPU time over the timed calls: what MLflow's client itself spends per call (for a search,
parsing the answer into protobuf and entities), whatever the server does.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_mod
import sys
import threading
import time

from bench.loads import Result

MAX_PROCESSES = 4  # 16 clients: 4 processes of 4 threads (each process imports MLflow: ~0.3 GB)
WARM_UP = 3


def _log_batch(client, experiment_id):
    from mlflow.entities import Metric

    run_id = client.create_run(experiment_id).info.run_id

    def call(i):
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"m{k % 10}", k * 0.5 + i, now, i * 100 + k) for k in range(100)])

    return call


def _log_metric(client, experiment_id):
    run_id = client.create_run(experiment_id).info.run_id

    def call(i):
        client.log_metric(run_id, "loss", 1.0 / (i + 2), step=i)

    return call


def _search_runs(client, experiment_id):
    def call(_i):
        runs = client.search_runs([experiment_id], "metrics.m0 >= 0", max_results=100, order_by=["metrics.m0 DESC"])
        if len(runs) != 100:
            raise AssertionError(f"search returned {len(runs)} runs, not 100")

    return call


def _search_traces(client, experiment_id):
    def call(_i):
        traces = client.search_traces(locations=[experiment_id], max_results=100)
        if len(traces) != 100 or not all(trace.data.spans for trace in traces):
            raise AssertionError(f"search_traces returned {len(traces)} traces, not 100 with their spans")

    return call


def _search_runs_by_start(client, experiment_id):
    # Issue 17's second shape: no filter, MLflow's default order (start time, newest first).
    def call(_i):
        runs = client.search_runs([experiment_id], max_results=100)
        if len(runs) != 100:
            raise AssertionError(f"search returned {len(runs)} runs, not 100")

    return call


OPS = {"log_batch": _log_batch, "log_metric": _log_metric, "search_runs": _search_runs,
       "search_traces": _search_traces, "search_runs_by_start": _search_runs_by_start}


def _process(base, op, threads, per_client, deadline_s, experiment_id, barrier, results):
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # As a user's job has it: MLflow resolves mlflow-artifacts: URIs (a trace's spans when a server
    # keeps them as artifacts) against the process's tracking URI, not the MlflowClient's.
    os.environ["MLFLOW_TRACKING_URI"] = base
    from mlflow import MlflowClient

    calls = [OPS[op](MlflowClient(base), experiment_id) for _ in range(threads)]
    measure(calls, [range(-1, -1 - WARM_UP, -1)] * threads, [range(per_client)] * threads,
            deadline_s, barrier, results)


def measure(calls, warm_ups, timed, deadline_s, barrier, results) -> None:
    """The run_processes protocol inside one process: `calls[n](i)` for each i of `warm_ups[n]`
    untimed, then at `barrier` all start together, each call in its own thread over the i of
    `timed[n]` until the deadline; puts (latencies, errors, CPU seconds of this process over the
    timed calls: all its threads) on `results`."""
    for call, indices in zip(calls, warm_ups):
        for i in indices:
            try:
                call(i)
            except Exception:
                pass  # the timed calls count errors
    latencies: list[list[float]] = [[] for _ in calls]
    errors = [0] * len(calls)
    said: list[Exception] = []
    barrier.wait()
    stop_at = time.perf_counter() + deadline_s
    cpu_began = time.process_time()

    def loop(n):
        for i in timed[n]:
            if time.perf_counter() > stop_at:
                break
            began = time.perf_counter()
            try:
                calls[n](i)
            except Exception as err:  # counted and shown: a benchmark reports failures, never hides them
                errors[n] += 1
                if not said:
                    # The process's first failure, said once: a count alone does not tell a
                    # timeout from a 500 (stock's search_traces failed 2 of 40 calls at 23:46).
                    said.append(err)
                    print(f"client error ({type(err).__name__}): {str(err)[:300]}", file=sys.stderr, flush=True)
                continue
            latencies[n].append(time.perf_counter() - began)

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(len(calls))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    results.put(([x for lat in latencies for x in lat], sum(errors), time.process_time() - cpu_began))


def threads_per_process(clients: int) -> list[int]:
    """`clients` client threads spread as evenly as they go over at most MAX_PROCESSES processes."""
    procs = min(clients, MAX_PROCESSES)
    return [clients // procs + (1 if n < clients % procs else 0) for n in range(procs)]


def run(base: str, op: str, clients: int, per_client: int, deadline_s: float, experiment_id: str,
        at_start=None) -> Result:
    """`clients` MlflowClients doing `op` at once; latencies of the timed calls. `at_start()`
    runs as the timed calls begin (after every client's warm-up)."""
    return run_processes(_process, [(base, op, threads, per_client, deadline_s, experiment_id)
                                    for threads in threads_per_process(clients)], deadline_s, at_start)


def run_processes(target, args: list[tuple], deadline_s: float, at_start=None) -> Result:
    """One spawned process per item of `args`, running `target(*item, barrier, results)`: each
    warms up, waits at `barrier`, makes its timed calls and puts (latencies, errors, CPU seconds
    it spent) on `results`. `at_start()` runs as the timed calls begin."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no state from the bench
    procs = len(args)
    barrier = ctx.Barrier(procs + 1)
    results = ctx.Queue()
    children = [ctx.Process(target=target, args=(*item, barrier, results), daemon=True) for item in args]
    for child in children:
        child.start()
    # Generous: each process imports MLflow and warms up first, on a busy machine. A process that
    # died on the way (its setup failed) ends the wait at once instead of after the timeout.
    waiting_until = time.monotonic() + 300
    while barrier.n_waiting < procs:
        if any(child.exitcode is not None for child in children) or time.monotonic() > waiting_until:
            for child in children:
                child.kill()
            return Result(ops=0, seconds=0.0, errors=1, latencies=[])
        time.sleep(0.1)
    barrier.wait(timeout=60)
    if at_start is not None:
        at_start()
    began = time.perf_counter()
    flat: list[float] = []
    errors = 0
    cpu = 0.0
    try:
        for _ in children:
            lats, errs, spent = results.get(timeout=deadline_s + 120)
            flat += lats
            errors += errs
            cpu += spent
    except queue_mod.Empty:
        errors += 1
    seconds = time.perf_counter() - began
    for child in children:
        child.join(30)
        if child.is_alive():
            child.kill()
    return Result(ops=len(flat), seconds=seconds, errors=errors, latencies=flat, client_cpu=cpu)
