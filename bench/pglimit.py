"""What PostgreSQL itself sustains for the rows of the log_batch load: the limit row (issue 17).

The same rows as bench/clients.py's log_batch (per request 100 metrics over 10 keys, one run per
client, steps and values as there), written as MLflow's schema stores a logged metric: an
`INSERT ... ON CONFLICT DO NOTHING` into metrics and the upsert of latest_metrics (every batch
MLflow logs writes both, and search reads the second: leaving it out would measure rows MLflow
never writes alone), by the store's own prepared statement (server/store.py `metric_write`, with
its run check: one primary-key read). One autocommitted statement per batch, committed with the
server's own durability settings, as an acknowledged log_batch is. No MLflow, no HTTP: one
process, the parameters rendered before the clock starts,
`CONNECTIONS` connections (threads; psycopg2 releases the GIL while it waits) so that both the
database's CPUs and its group commit are used, as 16 clients use them.

Into a fresh database with MLflow's schema: a copy (CREATE DATABASE ... TEMPLATE) of the server's
database right after its first start migrated it, before any load.
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg2

from bench import servers
from mlflow_gcp.server import store

CONNECTIONS = 16  # the 16 clients' concurrency; 1, 4 and 8 measured lower (bench docs)
METRICS = 100
# The store's own statement (server/store.py), so the limit writes exactly what it writes.
WRITE = store.metric_write("metrics", "latest_metrics", "runs", "active")


def copy_schema(template: str) -> str:
    """A new database with `template`'s contents (nobody may be connected to `template`)."""
    name = f"bench_pglimit_{uuid.uuid4().hex[:10]}"
    servers._admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def _rows(run_id: str, i: int) -> list[tuple]:
    # bench/clients.py's batch i: Metric(f"m{k % 10}", k * 0.5 + i, now, i * 100 + k)
    now = int(time.time() * 1000)
    return [(f"m{k % 10}", k * 0.5 + i, now, i * 100 + k, False, run_id) for k in range(METRICS)]


def measure(database: str, batches: int, connections: int = CONNECTIONS, deadline_s: float = 30.0) -> tuple[float, float]:
    """Metrics (rows of metrics) per second that `connections` connections of one process write
    into `database` in `batches` 100-metric transactions in all, and the backends' CPU
    milliseconds per transaction."""

    conns = [psycopg2.connect(dbname=database, **servers.PG) for _ in range(connections)]
    try:
        work: list[list[tuple]] = []
        for conn in conns:
            run_id = uuid.uuid4().hex
            with conn.cursor() as cur:
                now = int(time.time() * 1000)
                cur.execute("INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, "
                            "last_update_time) VALUES (%s, '', 'active', %s, %s) RETURNING experiment_id",
                            (f"pglimit-{run_id}", now, now))
                cur.execute("INSERT INTO runs (run_uuid, name, experiment_id, lifecycle_stage, status, "
                            "source_type, source_name, user_id, start_time, artifact_uri) "
                            "VALUES (%s, 'pglimit', %s, 'active', 'RUNNING', 'LOCAL', '', 'bench', %s, '')",
                            (run_id, cur.fetchone()[0], now))
                conn.commit()
                conn.autocommit = True
                cur.execute(WRITE.prepare)
                # 3 untimed batches, as each client warms up
                work.append([store.metric_write_params(run_id, _rows(run_id, i)) for i in range(-3, batches // connections)])
        done = [0] * connections
        pids = [conn.get_backend_pid() for conn in conns]
        barrier = threading.Barrier(connections + 1)
        stop_at = [0.0]

        def writer(n: int) -> None:
            with conns[n].cursor() as cur:
                for params in work[n][:3]:
                    cur.execute(WRITE.execute, params)
                barrier.wait()
                for params in work[n][3:]:
                    if time.perf_counter() > stop_at[0]:
                        break
                    cur.execute(WRITE.execute, params)
                    done[n] += 1

        threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(connections)]
        for t in threads:
            t.start()
        stop_at[0] = time.perf_counter() + 600
        barrier.wait(timeout=120)
        cpu_before = sum(servers._cpu_seconds(pid) for pid in pids)
        began = time.perf_counter()
        stop_at[0] = began + deadline_s
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
        cpu_ms = (sum(servers._cpu_seconds(pid) for pid in pids) - cpu_before) * 1000
        return sum(done) * METRICS / elapsed, cpu_ms / max(1, sum(done))
    finally:
        for conn in conns:
            conn.close()
