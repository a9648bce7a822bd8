"""Trace ingest, the server alone: what MLflow's client sends for each trace, captured, then
replayed with every trace made new (bench/replay.py's lean load generator).

Why: MLflow's client processes spend ~3 ms of CPU per span on this machine's 2 CPUs (its tracing,
then the OTLP and JSON encoding of its export), which caps bench/traces.py's client row near 4x
stock whatever the server does. On Cloud Run the clients run on the users' machines.

Capture (untimed, per server): a spawned process runs bench/traces.py's traced function (8 spans)
with MLflow's client pointed at bench/replay.py's recorder, one trace at a time, each followed by
the client's flush, so that each trace's requests are recorded apart, in the order they arrived:
its OTLP span posts (/v1/traces, protobuf, 5 spans then 3: the batch span processor's 5-span
batches), its StartTraceV3 (/api/3.0/mlflow/traces, JSON) and, when StartTraceV3 arrived before
any span (the client's async export queue sends on up to 10 threads, so the order varies), the
client's upload of the spans as an artifact (traces.json), as the server's answer asks for. The
recorder forwards everything: the client needs the real answers (StartTraceV3's decides that
upload), and the replay never sends these trace ids again. The process's first trace (with the
client's /version checks) is not kept.

Replay: each call is one captured trace's requests in their captured order on one connection,
under a new random trace id: its 16 bytes in every OTLP span (protobuf), their hex in MLflow's
"tr-<hex>" trace id (span attributes, StartTraceV3's JSON, the artifact path) and their base64 (the
artifact's span JSON). Same-length substitutions, so every protobuf length and Content-Length stays
valid; a captured request that carries none of these forms is refused (it would replay an id the
server has seen). Every call's bodies are rendered before the clock starts, none sent twice. The
figure is spans/s; spans the server did not store (counted in its spans table) are errors.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import multiprocessing
import os
import sys
from urllib.parse import urlsplit

from bench import replay, traces
from bench.replay import Captured

SPANS = "/v1/traces"
START = "/api/3.0/mlflow/traces"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts/"
CAPTURED = 16  # distinct captured traces per server, replayed in turn under new ids
CONNECTIONS = 8  # the client row's 8 clients


def _capture_process(url: str, experiment_id: str, count: int, pipe) -> None:
    """The client side of `capture`: a warm-up trace, then `count` traces, each flushed and
    reported on `pipe`, the next one made once the parent answers."""
    try:
        agent = traces.traced_client(url, experiment_id)
        for i in range(-1, count):
            agent(f"question {i}", i)
            traces.flush()
            pipe.send(("done", i))
            pipe.recv()
    except Exception as err:
        pipe.send(("failed", f"{type(err).__name__}: {err}"))


def capture(base: str, experiment_id: str, count: int = CAPTURED) -> list[list[Captured]]:
    """`count` traces as MLflow's client sent them to `base`: each one's requests, in order."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no tracing state from the bench
    parent, child = ctx.Pipe()
    calls = []
    with replay.Recorder(base) as rec:
        proc = ctx.Process(target=_capture_process, args=(rec.url, experiment_id, count, child), daemon=True)
        proc.start()
        try:
            for i in range(-1, count):
                if not parent.poll(traces.SETUP_TIMEOUT):
                    raise RuntimeError(f"no trace from the capture process after {traces.SETUP_TIMEOUT:.0f} s")
                kind, detail = parent.recv()
                if kind != "done":
                    raise RuntimeError(f"capture process: {detail}")
                seen = rec.take()
                if i >= 0:  # the first trace came with the client's one-off requests
                    calls.append(seen)
                parent.send("next")
        finally:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    for call in calls:
        _check_call(call)
    return calls


def _check_call(call: list[Captured]) -> None:
    paths = [urlsplit(c.target).path for c in call]
    bad = [(c.method, c.target, c.status) for c in call if c.status != 200]
    known = all(p in (SPANS, START) or (p.startswith(ARTIFACTS) and p.endswith("/traces.json")) for p in paths)
    if bad or not known or paths.count(START) != 1 or SPANS not in paths:
        raise RuntimeError(f"a trace's capture is not one StartTraceV3 and its span posts: {paths}, non-200: {bad}")


def trace_id(call: list[Captured]) -> bytes:
    """The 16 bytes of the OTel trace id of a captured trace (MLflow's id is "tr-" + their hex)."""
    start = next(c for c in call if urlsplit(c.target).path == START)
    return bytes.fromhex(json.loads(start.body)["trace"]["trace_info"]["trace_id"].removeprefix("tr-"))


def renamed(call: list[Captured], new: bytes) -> list[Captured]:
    """`call` as the client would have sent it for a trace whose id is `new` (16 bytes)."""
    old = trace_id(call)
    forms = [(old, new), (old.hex().encode(), new.hex().encode()), (base64.b64encode(old), base64.b64encode(new))]
    out = []
    for c in call:
        body = c.body
        for was, now in forms:
            body = body.replace(was, now)
        target = c.target.replace(old.hex(), new.hex())
        if (body, target) == (c.body, c.target) or any(was in body for was, _ in forms):
            raise RuntimeError(f"{c.method} {c.target}: the trace id not found or not all replaced")
        out.append(dataclasses.replace(c, target=target, body=body))
    return out


def new_traces(captured: list[list[Captured]], connections: int, per_conn: int) -> list[list[list[Captured]]]:
    """Per connection, `per_conn` calls: the captured traces in turn, each under a new random id."""
    return [[renamed(captured[(n * per_conn + k) % len(captured)], os.urandom(16)) for k in range(per_conn)]
            for n in range(connections)]


def ingest(server, experiment_id: str, per_conn: int, deadline_s: float, warm_up: int = 1) -> tuple[float, replay.Row]:
    """Captured traces replayed as new ones over CONNECTIONS connections: (spans/s, the row);
    spans the server did not store count as errors."""
    try:
        captured = capture(server.url, experiment_id)
    except Exception as err:
        return float("nan"), replay.failed("trace ingest", err)
    first = sum(urlsplit(call[0].target).path == START for call in captured)
    print(f"trace ingest: {len(captured)} traces captured, {first} with StartTraceV3 before any span "
          "(then the client uploads traces.json)", file=sys.stderr, flush=True)
    calls = new_traces(captured, CONNECTIONS, warm_up + per_conn)
    before = traces.stored_spans(server.database, experiment_id)
    row = replay.measured(server, calls, per_conn, deadline_s, warm_up=warm_up, repeat=False)
    arrived = traces.stored_spans(server.database, experiment_id) - before
    sent = (CONNECTIONS * warm_up + row.result.ops) * traces.SPANS_PER_TRACE
    row.result.errors += max(0, sent - arrived)
    return row.result.per_second * traces.SPANS_PER_TRACE, row
