"""Real PostgreSQL failures, injected into whatever store or server writes metrics to a database.

`install(dbname)` adds, to a database that already has MLflow's schema, triggers and an index
that act only on metric keys starting with `fault.` (everything else is untouched):

- `fault.timeout`: the metrics row fails as PostgreSQL fails a statement that ran out of its
  statement_timeout ("canceling statement due to statement timeout", SQLSTATE 57014), whoever
  issued it. Raised by the trigger with PostgreSQL's own code and message: a real timeout is armed
  when a statement starts, so a trigger can arm one only for a later statement of its
  transaction, and the bulk store writes a batch in one statement.
- `fault.wait`: the metrics row waits for advisory lock `ADVISORY_KEY`, which `Blocker` holds,
  so a test can act while a writer sits inside its INSERT (terminate it, delete its run).
- `fault.slow*` (tags): each tags row takes 5 ms, so two writers of one batch of such tags are
  inside their INSERTs at the same moment, as two server processes are at times.
- `fault.unique*`: a unique index on latest_metrics (run_uuid, value) for these keys: two such
  keys with one value in a run violate it (SQLSTATE 23505).

A deadlock needs no trigger: `Deadlocker` locks a run's latest_metrics row, waits for the
writer to queue behind it, then inserts the writer's own metrics row, which waits for the writer:
a real cycle, which the writer's backend detects (its deadlock_timeout is the default 1 s, ours
30 s), so the writer is the one aborted.
"""

from __future__ import annotations

import threading
import time

from tests.conftest import _pg_connect as connect

ADVISORY_KEY = 4242
WAIT_S = 60.0  # a generous bound for a writer to reach a lock on a busy machine
STATS_DELAY_S = 11.0  # an idle backend publishes its statistics within 10 s (PGSTAT_IDLE_INTERVAL)

_DDL = f"""
CREATE FUNCTION fault_metrics() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.key = 'fault.timeout' THEN
    RAISE EXCEPTION 'canceling statement due to statement timeout' USING ERRCODE = 'query_canceled';
  ELSIF NEW.key = 'fault.wait' THEN
    PERFORM pg_advisory_xact_lock_shared({ADVISORY_KEY});
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER fault_metrics BEFORE INSERT ON metrics
  FOR EACH ROW WHEN (NEW.key LIKE 'fault.%') EXECUTE FUNCTION fault_metrics();
CREATE FUNCTION fault_slow_tags() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_sleep(0.005);
  RETURN NEW;
END $$;
CREATE TRIGGER fault_slow_tags BEFORE INSERT ON tags
  FOR EACH ROW WHEN (NEW.key LIKE 'fault.slow%') EXECUTE FUNCTION fault_slow_tags();
CREATE UNIQUE INDEX fault_unique ON latest_metrics (run_uuid, value) WHERE key LIKE 'fault.unique%';
"""


def _query(dbname: str, statement: str, params=None):
    conn = connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def install(dbname: str) -> None:
    _query(dbname, _DDL)


def deadlocks(dbname: str) -> int:
    """PostgreSQL's count of deadlocks detected in `dbname`."""
    return _query(dbname, "SELECT deadlocks FROM pg_stat_database WHERE datname = %s", (dbname,))[0]


def wait_for_lock_waiter(conn, dbname: str, event: str | None = None) -> int:
    """The pid of a backend of `dbname` (not `conn`'s) waiting on a lock (of `event`)."""
    deadline = time.monotonic() + WAIT_S
    with conn.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND wait_event_type = 'Lock' AND (%s IS NULL OR wait_event = %s)",
                (dbname, event, event))
            row = cur.fetchone()
            if row:
                return row[0]
            time.sleep(0.02)
    raise AssertionError(f"no writer waited on a lock in {dbname} within {WAIT_S:.0f} s")


class Blocker:
    """Holds the advisory lock `fault.wait` rows wait for; `.waiter()` is the blocked backend."""

    def __init__(self, dbname: str):
        self.dbname = dbname
        self.conn = connect(dbname)
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_KEY,))

    def waiter(self) -> int:
        return wait_for_lock_waiter(self.conn, self.dbname, "advisory")

    def terminate(self, pid: int) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def release(self) -> None:
        if self.conn is not None:
            self.conn.close()  # ends the session: the lock goes with it
            self.conn = None


class Deadlocker:
    """Locks (run, key)'s latest_metrics row in its own transaction; `cycle(row)` makes a
    deadlock with the writer queued behind it, `rounds` times; then it lets go."""

    def __init__(self, dbname: str, run_id: str, key: str):
        self.dbname = dbname
        self.conn = connect(dbname)
        self.conn.autocommit = False
        with self.conn.cursor() as cur:
            cur.execute("SET deadlock_timeout = '30s'")
            cur.execute("SELECT 1 FROM latest_metrics WHERE run_uuid = %s AND key = %s FOR UPDATE", (run_id, key))
            if cur.fetchone() is None:
                raise AssertionError("the latest_metrics row to lock must exist")

    def cycle(self, row: tuple) -> None:
        """Wait for the writer to queue behind our lock, then insert its own metrics row
        (key, value, timestamp, step, is_nan, run_uuid): returns once PostgreSQL has aborted it."""
        wait_for_lock_waiter(self.conn, self.dbname)
        with self.conn.cursor() as cur:
            cur.execute("SAVEPOINT cycle")
            cur.execute("INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) "
                        "VALUES (%s, %s, %s, %s, %s, %s)", row)
            cur.execute("ROLLBACK TO SAVEPOINT cycle")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def in_thread(call):
    """Run `call` in a thread; returns a function that joins it and returns (result, error)."""
    out: dict = {}

    def run():
        try:
            out["result"] = call()
        except BaseException as err:  # handed to the test, which decides
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join():
        thread.join(WAIT_S * 2)
        if thread.is_alive():
            raise AssertionError("the write did not finish")
        return out.get("result"), out.get("error")

    return join
