"""Stock MLflow vs our server, same machine, same PostgreSQL, same run (issue 7).

    .venv/bin/python -m bench              # full (~12 min on 2 idle cores)
    .venv/bin/python -m bench --quick      # small counts
    .venv/bin/python -m bench --only ours --ours-env WORKERS=2   # try a lever on ours alone

Each server gets a fresh PostgreSQL database on 127.0.0.1:5432 and a local artifact directory
served through it. It is started once to create the schema, stopped, then started again: that
second start (existing schema, process start to the first /health 200) is the cold start. Idle
RSS is the sum over the whole process tree a few seconds after that. Then the loads run, one
after the other: log-batch, log-metric and search_runs through MLflow's own client (`MlflowClient`
in client processes, bench/clients.py), trace ingest and search_traces through it too
(bench/traces.py), artifact put+get as raw REST calls (bench/loads.py; marked
"raw" in the table, not a figure of MLflow's client). Next to the log_batch (16 clients),
search_runs, trace ingest, search_traces and get_metric_history rows, the server alone
(bench/replay.py, bench/trace_replay.py, rows "...: captured client requests replayed"): the
requests MLflow's client sent, captured from it, replayed by a load generator whose own CPU per
call is printed under each row, so that the client's CPU on this machine's shared CPUs does not
bound the figure (on Cloud Run the clients are on the users' machines; issue 17's goals are per
instance). Stock and ours run one after the other, never at the same time. Then ours runs once
more with one worker (WORKERS=1, Cloud Run's 1 vCPU) through the same loads at quick counts, for
its idle and peak RSS (absolute limits, issue 17).
After each load that seeds rows for the reads (search_runs' runs, the traces, the long histories)
the database is vacuumed and ANALYZEd, as Cloud SQL's autovacuum would have done by then
(servers.analyze).
Prints a markdown table with the ratio ours/stock.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

from bench import clients, history, loads, pglimit, replay, servers, trace_replay, traces, ui
from bench.servers import Server, cpu_spent

PEAK = "peak RSS during the loads, whole process tree (sampled every 0.25 s)"
SEARCH_A = "MlflowClient.search_runs 100 runs, 4 clients"
SEARCH_B = "MlflowClient.search_runs 100 runs by start time (10 params, 10 tags), 4 clients"
HISTORY = "MlflowClient.get_metric_history, 100,000 points"
FLOOR = "  floor of that row: the client alone, answers replayed (no server)"
UI_HISTORY = "UI get-history request, 100,000 points (one GET, parsed)"
CHART = "UI chart request (get-history-bulk-interval), 20 runs x 10,000 points"
UI_BYTES = "UI first load (experiments page): bytes on the wire"
UI_TIME = "UI first load, 20 Mbit/s 40 ms RTT: time to the experiment list"
# Ours again with one worker (Cloud Run's 1 vCPU), through every load at quick counts: issue 17's
# memory goals are absolute (a 512 MiB instance must be safe), so these rows have limits, no ratio.
ONE_IDLE = "idle RSS, whole process tree, one worker (WORKERS=1)"
ONE_PEAK = "peak RSS during every load, whole process tree, one worker (WORKERS=1)"
LIMITS = {ONE_IDLE: 200, ONE_PEAK: 400}  # MiB
TRACE_INGEST = "mlflow.trace ingest (8-span traces, client's async export), 8 clients"
SEARCH_TRACES = "MlflowClient.search_traces 100 traces with spans, 4 clients"
BATCH16 = "MlflowClient.log_batch 100 metrics, 16 clients"
CPU_CLIENT = "log_batch 16 clients: MLflow client processes' CPU per request"
CPU_SERVER = "log_batch 16 clients: server process tree's CPU per request"
CPU_PG = "log_batch 16 clients: PostgreSQL backends' CPU per request"
PG_LIMIT = "PostgreSQL alone, the same rows (bench/pglimit.py: one process, no MLflow)"
PG_LIMIT_CPU = "PostgreSQL alone: backends' CPU per 100 rows"
PG_LIMIT_GOAL = 0.6  # issue 17: ours at 16 clients >= 60% of the limit
# The server alone (bench/replay.py): the same requests, captured from MLflow's client, replayed
# by a load generator whose own CPU per call is printed under each row.
REPLAYED = ": captured client requests replayed"
R_BATCH16 = f"log_batch 100 metrics, 16 connections{REPLAYED}"
R_SEARCH_A = f"search_runs 100 runs, 4 connections{REPLAYED}"
R_SEARCH_B = f"search_runs 100 runs by start time (10 params, 10 tags), 4 connections{REPLAYED}"
R_TRACE_INGEST = f"trace ingest (8-span traces, each replayed as a new trace), 8 connections{REPLAYED}"
R_SEARCH_TRACES = f"search_traces 100 traces with spans, 4 connections{REPLAYED}"
R_HISTORY = f"get_metric_history 100,000 points (the client's paged GETs), 1 connection{REPLAYED}"


def replayer(row: str) -> str:
    """The row under `row` with the replayer's own CPU per call."""
    short = {R_BATCH16: "log_batch", R_SEARCH_A: "search_runs", R_SEARCH_B: "search_runs by start time",
             R_TRACE_INGEST: "trace ingest", R_SEARCH_TRACES: "search_traces", R_HISTORY: "get_metric_history"}[row]
    return f"  the replayer's own CPU per call ({short}, replayed)"


# name, unit, better ("higher"/"lower"), goal ratio ours/stock (None: no goal); goals of issue 17
FIGURES = [
    ("MlflowClient.log_batch 100 metrics, 1 client", "metrics/s", "higher", None),
    ("MlflowClient.log_batch 100 metrics, 4 clients", "metrics/s", "higher", None),
    (BATCH16, "metrics/s", "higher", 8.0),
    (CPU_CLIENT, "ms", "lower", None),
    (CPU_SERVER, "ms", "lower", None),
    (CPU_PG, "ms", "lower", None),
    (R_BATCH16, "metrics/s", "higher", 8.0),
    (replayer(R_BATCH16), "ms", "lower", None),
    (PG_LIMIT, "metrics/s", "higher", None),
    (PG_LIMIT_CPU, "ms", "lower", None),
    ("MlflowClient.log_metric p50, 1 client", "ms", "lower", 1 / 4),
    (SEARCH_A, "req/s", "higher", 8.0),
    (SEARCH_B, "req/s", "higher", 8.0),
    (R_SEARCH_A, "req/s", "higher", 8.0),
    (replayer(R_SEARCH_A), "ms", "lower", None),
    (R_SEARCH_B, "req/s", "higher", 8.0),
    (replayer(R_SEARCH_B), "ms", "lower", None),
    (TRACE_INGEST, "spans/s", "higher", 4.0),
    (R_TRACE_INGEST, "spans/s", "higher", 4.0),
    (replayer(R_TRACE_INGEST), "ms", "lower", None),
    (SEARCH_TRACES, "req/s", "higher", 3.0),
    (R_SEARCH_TRACES, "req/s", "higher", 3.0),
    (replayer(R_SEARCH_TRACES), "ms", "lower", None),
    ("raw artifact put+get 2 KiB, 1 client", "ops/s", "higher", None),
    ("raw artifact put+get 2 KiB, 4 clients", "ops/s", "higher", None),
    ("raw artifact put+get 2 KiB, 16 clients", "ops/s", "higher", None),
    ("cold start to /health 200 (existing schema)", "s", "lower", 1 / 5),
    ("idle RSS, whole process tree", "MiB", "lower", None),
    ("RSS after the loads, whole process tree", "MiB", "lower", None),
    (PEAK, "MiB", "lower", None),
    (ONE_IDLE, "MiB", "lower", None),
    (ONE_PEAK, "MiB", "lower", None),
    (HISTORY, "s", "lower", 1 / 5),
    (FLOOR, "s", "lower", None),
    (R_HISTORY, "s", "lower", 1 / 5),
    (replayer(R_HISTORY), "ms", "lower", None),
    (UI_HISTORY, "s", "lower", 1 / 5),
    (CHART, "s", "lower", 1 / 3),
    (UI_BYTES, "KiB", "lower", 1 / 3),
    (UI_TIME, "s", "lower", 1 / 2),
]

FULL = {"batch": {1: 60, 4: 40, 16: 40}, "pglimit": 2000, "metric": 300, "search_runs": 200, "search": 40,
        "artifacts": {1: 100, 4: 40, 16: 25}, "deadline": 60.0, "cold_tries": 2, "settle": 8.0,
        "ui_tries": 2, "history_tries": 5, "traces": 25, "search_traces": 10,
        "replay": {"batch": 40, "search": 20, "search_traces": 5, "history": 3, "trace_ingest": 40}}
QUICK = {"batch": {1: 15, 4: 8, 16: 4}, "pglimit": 400, "metric": 60, "search_runs": 100, "search": 4,
         "artifacts": {1: 25, 4: 10, 16: 4}, "deadline": 20.0, "cold_tries": 1, "settle": 5.0,
         "ui_tries": 1, "history_tries": 2, "traces": 13, "search_traces": 3,
         "replay": {"batch": 8, "search": 5, "search_traces": 2, "history": 1, "trace_ingest": 10}}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(server: Server, counts: dict, pg_limit: bool = False) -> tuple[dict[str, float], int]:
    """Every figure for one server kind; returns (figures, errors seen by the clients)."""
    figures: dict[str, float] = {}
    errors = 0
    log(f"{server.kind}: first start (creates the schema)")
    server.start()
    server.stop()
    # The limit's database: MLflow's schema as the server just created it, before any load.
    limit_db = pglimit.copy_schema(server.database) if pg_limit else None
    colds = []
    for _ in range(counts["cold_tries"]):
        colds.append(server.start())
        if len(colds) < counts["cold_tries"]:
            server.stop()
    figures["cold start to /health 200 (existing schema)"] = min(colds)
    log(f"{server.kind}: cold start {min(colds):.2f} s; waiting {counts['settle']:.0f} s for idle")
    time.sleep(counts["settle"])
    figures["idle RSS, whole process tree"] = server.tree_rss_mib()

    base, deadline = server.url, counts["deadline"]
    client = loads.Client(base)
    peak = PeakRss(server)
    if ui.available():
        figures.update(ui_figures(server, client, counts["ui_tries"]))
    exp = client.experiment(f"bench-{server.kind}")
    for n, per in counts["batch"].items():
        cpu_before = {}
        r = clients.run(base, "log_batch", n, per, deadline, exp, at_start=lambda: cpu_before.update(server.cpu_seconds()))
        if n == 16 and r.ops:
            server_cpu, pg_cpu = cpu_spent(cpu_before, server.cpu_seconds())
            figures.update({CPU_CLIENT: r.client_cpu / r.ops * 1000, CPU_SERVER: server_cpu / r.ops * 1000,
                            CPU_PG: pg_cpu / r.ops * 1000})
            log(f"{server.kind}: log_batch x16 CPU per request: client {figures[CPU_CLIENT]:.2f} ms, "
                f"server {figures[CPU_SERVER]:.2f} ms, PostgreSQL {figures[CPU_PG]:.2f} ms")
        figures[f"MlflowClient.log_batch 100 metrics, {n} client{'s' if n > 1 else ''}"] = r.per_second * 100
        errors += r.errors
        log(f"{server.kind}: log_batch x{n}: {r.per_second * 100:.0f} metrics/s ({r.ops} req, {r.errors} err)")
    row = replay.log_batch(server, exp, 16, counts["replay"]["batch"], deadline)
    figures.update({R_BATCH16: row.result.per_second * 100, replayer(R_BATCH16): row.result.client_cpu_ms})
    errors += row.result.errors
    log(f"{server.kind}: log_batch x16 replayed: {figures[R_BATCH16]:.0f} metrics/s ({row.describe()})")
    if limit_db is not None:
        try:
            figures[PG_LIMIT], figures[PG_LIMIT_CPU] = pglimit.measure(limit_db, counts["pglimit"], deadline_s=deadline)
        finally:
            servers.drop_database(limit_db)
        log(f"PostgreSQL limit: {figures[PG_LIMIT]:.0f} metrics/s, {figures[PG_LIMIT_CPU]:.2f} ms CPU per 100 rows")
    r = clients.run(base, "log_metric", 1, counts["metric"], deadline, exp)
    figures["MlflowClient.log_metric p50, 1 client"] = r.p50_ms
    errors += r.errors
    log(f"{server.kind}: log_metric p50 {r.p50_ms:.2f} ms, p90 {r.p90_ms:.2f} ms ({r.ops} req, {r.errors} err)")
    # Two shapes (issue 17): A filtered and ordered by a metric; B MLflow's default order with
    # 10 tags per run. The clients' own CPU per answer bounds any server's figure (client_bound).
    for name, replayed, op, tags in ((SEARCH_A, R_SEARCH_A, "search_runs", 5),
                                     (SEARCH_B, R_SEARCH_B, "search_runs_by_start", 10)):
        search_exp = client.experiment(f"bench-{op}-{server.kind}")
        loads.seed_search(base, search_exp, counts["search_runs"], tags=tags)
        servers.analyze(server.database)
        cpu_before = server.cpu_seconds()
        r = clients.run(base, op, 4, counts["search"], deadline, search_exp)
        server_cpu, db_cpu = cpu_spent(cpu_before, server.cpu_seconds())
        figures[name] = r.per_second
        per_call = {"client": r.client_cpu_ms, "server": server_cpu / max(r.ops, 1) * 1000,
                    "database": db_cpu / max(r.ops, 1) * 1000}
        figures.update({f"{CPU_PER_CALL}{part}: {name}": ms for part, ms in per_call.items()})
        errors += r.errors
        log(f"{server.kind}: {op} {r.per_second:.1f} req/s ({r.ops} req, {r.errors} err); CPU per answer: "
            + ", ".join(f"{part} {ms:.1f} ms" for part, ms in per_call.items()))
        row = replay.search(server, op, search_exp, 4, counts["replay"]["search"], deadline)
        figures.update({replayed: row.result.per_second, replayer(replayed): row.result.client_cpu_ms})
        errors += row.result.errors
        log(f"{server.kind}: {op} replayed: {row.result.per_second:.1f} req/s ({row.describe()})")
    figures.update(trace_figures(server, counts))
    errors += figures.pop("errors")
    for n, per in counts["artifacts"].items():
        r = loads.artifacts(base, n, per, deadline)
        figures[f"raw artifact put+get 2 KiB, {n} client{'s' if n > 1 else ''}"] = r.per_second
        errors += r.errors
        log(f"{server.kind}: artifacts x{n}: {r.per_second:.1f} ops/s ({r.errors} err)")
    seeded = history.seed(base, server.database)
    servers.analyze(server.database)
    figures[HISTORY] = history.get_metric_history(base, seeded, counts["history_tries"])
    figures[FLOOR] = history.client_floor(base, seeded, counts["history_tries"])
    figures[R_HISTORY], row = replay.history(server, seeded["long_run"], "loss", counts["replay"]["history"])
    figures[replayer(R_HISTORY)] = row.result.client_cpu_ms
    errors += row.result.errors
    log(f"{server.kind}: get_metric_history replayed: {figures[R_HISTORY]:.2f} s ({row.describe()})")
    figures[UI_HISTORY] = history.ui_history(base, seeded, counts["history_tries"])
    figures[CHART] = history.chart_request(base, seeded, counts["history_tries"])
    log(f"{server.kind}: get_metric_history {figures[HISTORY]:.2f} s (client alone {figures[FLOOR]:.2f} s), UI get-history {figures[UI_HISTORY]:.2f} s, "
        f"chart request {figures[CHART]:.2f} s")
    figures["RSS after the loads, whole process tree"] = server.tree_rss_mib()
    figures[PEAK] = peak.stop()
    return figures, errors


def one_worker_memory(ours_env: dict[str, str], errors: dict[str, int]) -> dict[str, float]:
    """Ours with WORKERS=1 through every load of the bench at quick counts (~1 min): idle RSS and
    the peak while the loads run (the figures of `measure`, kept only for memory)."""
    server = Server("ours", extra_env={**ours_env, "WORKERS": "1"})
    log("ours again with one worker (WORKERS=1), quick counts: memory under every load")
    try:
        figures, seen = measure(server, QUICK)
    finally:
        server.cleanup()
    errors["ours"] = errors.get("ours", 0) + seen
    log(f"ours, one worker: idle {figures['idle RSS, whole process tree']:.0f} MiB, peak {figures[PEAK]:.0f} MiB")
    return {ONE_IDLE: figures["idle RSS, whole process tree"], ONE_PEAK: figures[PEAK]}


def trace_figures(server: Server, counts: dict) -> dict[str, float]:
    """Trace ingest through MLflow's client, then search_traces over the traces it left (at
    least 100: 8 clients x 13 traces in the quick run), then trace ingest replayed (into an
    experiment of its own: the searches' stays as the client left it)."""
    exp = loads.Client(server.url).experiment(f"bench-traces-{server.kind}")
    r, per_trace = traces.ingest(server, exp, 8, counts["traces"], counts["deadline"])
    log(f"{server.kind}: trace ingest {r.per_second:.0f} spans/s ({r.ops} spans in {r.seconds:.1f} s, {r.errors} err); "
        "CPU per trace: " + ", ".join(f"{part} {ms:.1f} ms" for part, ms in per_trace.items()))
    servers.analyze(server.database)
    s = clients.run(server.url, "search_traces", 4, counts["search_traces"], counts["deadline"], exp)
    log(f"{server.kind}: search_traces {s.per_second:.2f} req/s ({s.ops} req, {s.errors} err)")
    row = replay.search(server, "search_traces", exp, 4, counts["replay"]["search_traces"], counts["deadline"])
    log(f"{server.kind}: search_traces replayed: {row.result.per_second:.2f} req/s ({row.describe()})")
    replayed_exp = loads.Client(server.url).experiment(f"bench-traces-replayed-{server.kind}")
    spans, ingest = trace_replay.ingest(server, replayed_exp, counts["replay"]["trace_ingest"], counts["deadline"])
    log(f"{server.kind}: trace ingest replayed: {spans:.0f} spans/s ({ingest.describe()})")
    return {TRACE_INGEST: r.per_second, SEARCH_TRACES: s.per_second, R_SEARCH_TRACES: row.result.per_second,
            replayer(R_SEARCH_TRACES): row.result.client_cpu_ms, R_TRACE_INGEST: spans,
            replayer(R_TRACE_INGEST): ingest.result.client_cpu_ms,
            "errors": r.errors + s.errors + row.result.errors + ingest.result.errors,
            **{f"{CPU_PER_TRACE}{part}: {TRACE_INGEST}": ms for part, ms in per_trace.items()}}


class PeakRss:
    """The largest tree RSS seen from now until stop(), sampled in a thread."""

    def __init__(self, server: Server, every: float = 0.25):
        import threading

        self.peak, self.done = server.tree_rss_mib(), threading.Event()

        def sample():
            while not self.done.wait(every):
                self.peak = max(self.peak, server.tree_rss_mib())

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.peak


def ui_figures(server: Server, client: loads.Client, tries: int) -> dict[str, float]:
    """A first visit of the experiments page in headless Chromium, on loopback (bytes) and over
    a shaped link (time; best of `tries`, each with an empty cache)."""
    client.experiment(ui.EXPERIMENT)
    plain = ui.first_load(server.port, ui.EXPERIMENT)
    shaped = min((ui.first_load(server.port, ui.EXPERIMENT, mbit=20, rtt_ms=40) for _ in range(tries)),
                 key=lambda load: load.seconds)
    log(f"{server.kind}: UI first load {plain.wire_bytes / 1024:.0f} KiB on the wire "
        f"({plain.body_bytes / 1024:.0f} KiB decoded, {plain.requests} requests); "
        f"{shaped.seconds:.2f} s over 20 Mbit/s, 40 ms")
    return {UI_BYTES: plain.wire_bytes / 1024, UI_TIME: shaped.seconds}


CPU_PER_CALL = "CPU ms per search answer, "
CPU_PER_TRACE = "CPU ms per trace, "


def client_bound(results: dict[str, dict[str, float]]) -> list[str]:
    """Per search shape (CPU per answer) and for trace ingest through MLflow's client (CPU per
    trace): MLflow's client, the server tree, the database, for stock and ours, and the largest
    ratio over stock that MLflow's client itself allows here.

    Why: the clients run on this machine's CPUs beside the server, and MLflow's client spends a
    fixed CPU time per 100-run answer (JSON -> protobuf -> entities: ~30 ms alone, measured on a
    recorded answer) and per 8-span trace (making and exporting its spans). With
    all CPUs busy, answers (traces)/s is about CPUs / (CPU per answer, all parts), so even a
    server and database costing nothing could not beat stock by more than stock's total per
    answer over the client's part. CPU time, unlike wall time, is little disturbed by other work
    on a shared machine."""
    lines = []
    for prefix, name, unit in ((CPU_PER_CALL, SEARCH_A, "answer"), (CPU_PER_CALL, SEARCH_B, "answer"),
                               (CPU_PER_TRACE, TRACE_INGEST, "trace")):
        parts = {}
        for kind in ("stock", "ours"):
            got = results.get(kind, {})
            per = {p: got.get(f"{prefix}{p}: {name}") for p in ("client", "server", "database")}
            if all(v is not None and v == v for v in per.values()):
                parts[kind] = per
        if not parts:
            continue
        text = "; ".join(f"{kind} client {p['client']:.1f} + server {p['server']:.1f} + database "
                         f"{p['database']:.1f} ms" for kind, p in parts.items())
        if "stock" in parts:
            stock = parts["stock"]
            client = min(p["client"] for p in parts.values())
            text += (f": at most {sum(stock.values()) / client:.1f}x stock with a server and database "
                     "costing nothing")
            if "ours" in parts:
                text += f"; {sum(stock.values()) / sum(parts['ours'].values()):.1f}x by CPU per {unit}"
        lines.append(f"- {name}: {text}")
    return lines


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def table(results: dict[str, dict[str, float]]) -> str:
    stock, ours = results.get("stock", {}), results.get("ours", {})
    lines = [
        "| figure | unit | stock 3.17.2 | ours | ours/stock | goal | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for name, unit, better, goal in FIGURES:
        s, o = stock.get(name), ours.get(name)
        ratio = o / s if s and o is not None else None
        if name in LIMITS and o is not None:
            goal_txt, met = f"<= {LIMITS[name]} MiB", "yes" if o <= LIMITS[name] else "no"
        elif goal is None or ratio is None:
            goal_txt, met = "-", "-"
        else:
            goal_txt = f"{'>=' if better == 'higher' else '<='} {goal:.3g}x"
            met = "yes" if (ratio >= goal if better == "higher" else ratio <= goal) else "no"
        lines.append(f"| {name} | {unit} | {_fmt(s)} | {_fmt(o)} | {_fmt(ratio) if ratio is not None else '-'} | {goal_txt} | {met} |")
    return "\n".join(lines)


def limit_lines(ours: dict[str, float]) -> str:
    """Ours at 16 clients as a fraction of what PostgreSQL alone sustains for the same rows, and
    the ceiling the clients' own CPU puts on that fraction on this machine."""
    if not ours.get(PG_LIMIT) or BATCH16 not in ours:
        return "PostgreSQL limit: not measured"
    fraction = ours[BATCH16] / ours[PG_LIMIT]
    lines = [f"log_batch at 16 clients, ours: {fraction:.0%} of the PostgreSQL limit "
             f"({_fmt(ours[BATCH16])} of {_fmt(ours[PG_LIMIT])} metrics/s; goal >= {PG_LIMIT_GOAL:.0%}: "
             f"{'met' if fraction >= PG_LIMIT_GOAL else 'not met'})"]
    if ours.get(CPU_CLIENT) and ours.get(PG_LIMIT_CPU):
        # The clients run on the same CPUs as PostgreSQL: even a server that cost nothing would
        # leave PostgreSQL only its share of each request's CPU.
        share = ours[PG_LIMIT_CPU] / (ours[PG_LIMIT_CPU] + ours[CPU_CLIENT])
        lines.append(f"ceiling here with a server that cost no CPU: PostgreSQL {ours[PG_LIMIT_CPU]:.2f} ms + "
                     f"MLflow's client {ours[CPU_CLIENT]:.2f} ms per request on the same {os.cpu_count()} CPUs "
                     f"= {share:.0%} of the limit")
    if ours.get(R_BATCH16):
        fraction = ours[R_BATCH16] / ours[PG_LIMIT]
        lines.append(f"log_batch at 16 connections, captured client requests replayed (no MLflow client on these "
                     f"CPUs), ours: {fraction:.0%} of the PostgreSQL limit ({_fmt(ours[R_BATCH16])} of "
                     f"{_fmt(ours[PG_LIMIT])} metrics/s; goal >= {PG_LIMIT_GOAL:.0%}: "
                     f"{'met' if fraction >= PG_LIMIT_GOAL else 'not met'})")
    return "\n".join(lines)


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({cpu}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts")
    parser.add_argument("--only", choices=("stock", "ours"), help="measure one server only")
    parser.add_argument("--ours-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for our server (repeatable), e.g. WORKERS=2")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        ours_env = dict(item.split("=", 1) for item in args.ours_env)
    except ValueError:
        parser.error("--ours-env takes KEY=VALUE")
    counts = QUICK if args.quick else FULL
    load_before = os.getloadavg()
    started = datetime.now(timezone.utc)
    results: dict[str, dict[str, float]] = {}
    errors: dict[str, int] = {}
    for kind in ("stock", "ours"):
        if args.only and kind != args.only:
            continue
        server = Server(kind, extra_env=ours_env if kind == "ours" else {})
        try:
            results[kind], errors[kind] = measure(server, counts, pg_limit=kind == "ours")
        finally:
            server.cleanup()
    if "ours" in results:
        results["ours"].update(one_worker_memory(ours_env, errors))
    load_after = os.getloadavg()
    print(f"{started:%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"{'quick' if args.quick else 'full'} run; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after (machine shared with other work: figures are noisy)")
    if ours_env:
        print(f"ours with {ours_env}")
    print()
    print(table(results))
    bound = client_bound(results)
    if bound:
        print("\nsearch_runs CPU per answer, trace ingest CPU per trace, and the bound MLflow's own client "
              "sets (clients and servers share this machine's CPUs):")
        print("\n".join(bound))
    print()
    print(limit_lines(results.get("ours", {})))
    if any(errors.values()):
        print(f"\nclient errors: {errors}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"started": started.isoformat(), "machine": machine(), "results": results,
                       "errors": errors, "load": [load_before, load_after]}, fh, indent=2)
    return 1 if any(errors.values()) else 0
