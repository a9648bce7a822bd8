"""bench/run.py's client_bound: the most a server can gain over stock where MLflow's client's own
CPU per answer (search_runs) or per trace (trace ingest) shares the machine, from the figures."""

from __future__ import annotations

from bench import run


def _parts(prefix: str, name: str, client: float, server: float, database: float) -> dict[str, float]:
    return {f"{prefix}client: {name}": client, f"{prefix}server: {name}": server,
            f"{prefix}database: {name}": database}


def test_trace_ingest_bound_is_stocks_cpu_per_trace_over_the_smaller_client_part():
    results = {"stock": _parts(run.CPU_PER_TRACE, run.TRACE_INGEST, 24.0, 30.0, 18.0),
               "ours": _parts(run.CPU_PER_TRACE, run.TRACE_INGEST, 25.0, 10.0, 4.0)}
    assert run.client_bound(results) == [
        f"- {run.TRACE_INGEST}: stock client 24.0 + server 30.0 + database 18.0 ms; "
        "ours client 25.0 + server 10.0 + database 4.0 ms: at most 3.0x stock with a server and "
        "database costing nothing; 1.8x by CPU per trace"]


def test_each_row_reads_its_own_figures_and_a_missing_part_leaves_a_kind_out():
    results = {"stock": {**_parts(run.CPU_PER_CALL, run.SEARCH_A, 30.0, 100.0, 50.0),
                         **_parts(run.CPU_PER_TRACE, run.TRACE_INGEST, 20.0, 20.0, 8.0)},
               "ours": {**_parts(run.CPU_PER_CALL, run.SEARCH_A, 40.0, 10.0, 10.0),
                        **_parts(run.CPU_PER_TRACE, run.TRACE_INGEST, 24.0, 8.0, float("nan"))}}
    search, trace = run.client_bound(results)
    assert search.startswith(f"- {run.SEARCH_A}: ") and search.endswith(
        "at most 6.0x stock with a server and database costing nothing; 3.0x by CPU per answer")
    # ours' trace database figure is NaN (a failed ingest): stock alone, bounded by its own client.
    assert trace == (f"- {run.TRACE_INGEST}: stock client 20.0 + server 20.0 + database 8.0 ms: at most "
                     "2.4x stock with a server and database costing nothing")
