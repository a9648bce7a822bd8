"""bench/servers.py's step after the loads that seed the reads: the tables end as Cloud SQL's
autovacuum leaves them (statistics and a visibility map), not as this machine's PostgreSQL
with autovacuum off does."""

from __future__ import annotations

import psycopg2

from bench import servers
from bench.servers import PG


def _table_state(database: str, table: str) -> tuple:
    conn = psycopg2.connect(dbname=database, **PG)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT last_vacuum IS NOT NULL, last_analyze IS NOT NULL FROM pg_stat_user_tables "
                        "WHERE relname = %s", (table,))
            stats = cur.fetchone()
            cur.execute("SELECT reltuples::bigint, relallvisible > 0 FROM pg_class WHERE relname = %s", (table,))
            return stats, cur.fetchone()
    finally:
        conn.close()


def test_a_freshly_loaded_table_gets_statistics_and_a_visibility_map(new_database):
    database = new_database("bench_servers").rsplit("/", 1)[1]
    conn = psycopg2.connect(dbname=database, **PG)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE metrics (run_uuid text, step bigint, value double precision)")
            cur.execute("INSERT INTO metrics SELECT 'r', i, i FROM generate_series(1, 5000) AS i")
    finally:
        conn.close()
    assert _table_state(database, "metrics") == ((False, False), (-1, False))

    servers.analyze(database)

    assert _table_state(database, "metrics") == ((True, True), (5000, True))
