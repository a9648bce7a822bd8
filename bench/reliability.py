"""Figures for issue 8: does the server lose nothing under load and faults, and fit its budget?

    .venv/bin/python bench/reliability.py            # full: 16 clients, every scenario
    .venv/bin/python bench/reliability.py --quick    # small shapes (what the tests run)
    .venv/bin/python bench/reliability.py --only load,gcs --json

Everything runs on 127.0.0.1: a private PostgreSQL 15 (initdb in a tmp dir, max_connections 25 as
db-f1-micro), the GCS emulator, our entrypoint (`python -m mlflow_gcp.server`), the Cloud Run front
stand-in and the real MLflow client with the `gcp` auth plugin. Bounded: a fixed count of
operations per scenario and a time limit per load (--timeout).

Columns: ops (client calls intended), user errs (errors that reached the caller after the client's
retries), retried (5xx answers the client retried), recover s (fault to the first successful probe
request after the last failed one), lost / dup (acknowledged rows missing / stored twice, read from
PostgreSQL and the bucket), unacked runs (runs stored without an acknowledgement: a create_run
retried after its answer was lost), peak conn / max (pg_stat_activity client backends vs
max_connections), slot errs ("remaining connection slots" in logs or errors). The last row is a
control: the same instances with MLflow's default pools (5 + 10) instead of the budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reliability import scenarios, workload  # noqa: E402

FULL = workload.Shape(clients=16, runs=4, params=10, batches=5, metrics=50, artifacts=2)
QUICK = workload.Shape(clients=16, runs=1, params=5, batches=2, metrics=20, artifacts=1)
FAULTS = {
    "load": scenarios.load,
    "postgres": scenarios.postgres_restart,
    "server": scenarios.server_killed,
    "gcs": scenarios.gcs_stopped,
    "dbdown": scenarios.started_while_db_down,
}
COLUMNS = [
    ("scenario", "scenario", 22), ("operations", "ops", 6), ("user_errors", "user errs", 9),
    ("retried_answers", "retried", 7), ("recover_s", "recover s", 9), ("lost", "lost", 5),
    ("duplicated", "dup", 4), ("unacknowledged_runs", "unacked runs", 12),
    ("peak_connections", "peak conn", 9), ("max_connections", "max", 4), ("slot_errors", "slot errs", 9),
    ("seconds", "load s", 7),
]


def table(rows: list[dict]) -> str:
    head = "  ".join(title.rjust(w) if i else title.ljust(w) for i, (_, title, w) in enumerate(COLUMNS))
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append("  ".join(
            str(row[key]).rjust(w) if i else str(row[key]).ljust(w) for i, (key, _, w) in enumerate(COLUMNS)
        ))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, as the tests run them")
    parser.add_argument("--only", default="",
                        help=f"comma-separated subset of {','.join([*FAULTS, 'budget', 'nobudget'])}")
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario instead of a table")
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    wanted = [w for w in args.only.split(",") if w] or [*FAULTS, "budget", "nobudget"]
    unknown = set(wanted) - {*FAULTS, "budget", "nobudget"}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    results: list[scenarios.Figures] = []
    started = time.monotonic()
    fault_names = [w for w in wanted if w in FAULTS]
    if fault_names:
        with scenarios.ReliabilityStack(workers=2) as stack:
            for name in fault_names:
                print(f"... {name}", file=sys.stderr, flush=True)
                results.append(FAULTS[name](stack, shape))
    if "budget" in wanted:
        print("... budget", file=sys.stderr, flush=True)
        instances, workers = (2, 1) if args.quick else (3, 2)
        results.append(scenarios.connection_budget(shape, instances, workers))
    if "nobudget" in wanted:
        # Control: the same servers with MLflow's default pools (5 + 10 overflow per engine).
        print("... nobudget (control)", file=sys.stderr, flush=True)
        instances, workers = (2, 1) if args.quick else (3, 2)
        results.append(scenarios.connection_budget(shape, instances, workers, pool=(5, 10)))
    if args.json:
        for r in results:
            print(json.dumps({**r.row(), "verification": r.verification, "errors": r.errors}))
    else:
        print(table([r.row() for r in results]))
        for r in results:
            for err in r.errors:
                print(f"  {r.scenario}: {err}")
        print(f"\nshape per scenario: {shape}; total {time.monotonic() - started:.0f} s")
    bad = [r.scenario for r in results
           if not r.scenario.startswith("pool ") and (r.user_errors or r.lost or r.duplicated or r.slot_errors)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
