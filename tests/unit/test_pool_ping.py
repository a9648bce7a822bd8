"""server/pool_plugin.py quiet_ping: the pool's pre-ping skips its round trip only for an idle
connection with nothing on its socket; anything else gets the real ping."""

from __future__ import annotations

import time

import psycopg2

from mlflow_gcp.server.pool_plugin import quiet_ping
from tests.conftest import _pg_connect


class Dialect:
    driver = "psycopg2"

    def __init__(self):
        self.real = 0

    def do_ping(self, dbapi_connection):
        self.real += 1
        with dbapi_connection.cursor() as cur:
            cur.execute("SELECT 1")
        return True


def _pooled():
    conn = _pg_connect()
    conn.autocommit = False  # as SQLAlchemy's pool holds them
    return conn


def test_quiet_connection_skips_the_round_trip_and_a_busy_one_does_not(postgres_admin_url):
    dialect = Dialect()
    quiet_ping(dialect)
    quiet_ping(dialect)  # once per dialect
    conn = _pooled()
    try:
        assert dialect.do_ping(conn) and dialect.real == 0
        with conn.cursor() as cur:
            cur.execute("SELECT 1")  # a transaction open: not idle
        assert dialect.do_ping(conn) and dialect.real == 1
    finally:
        conn.close()


def test_backend_terminated_while_pooled_gets_the_real_ping_which_fails(postgres_admin_url):
    dialect = Dialect()
    quiet_ping(dialect)
    conn, admin = _pooled(), _pg_connect()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (conn.get_backend_pid(),))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the backend's FATAL message and EOF arrive
            try:
                dialect.do_ping(conn)
            except psycopg2.OperationalError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the terminated connection was never pinged for real")
        assert dialect.real >= 1
    finally:
        conn.close()
        admin.close()
