"""store._execute_plain (a statement on the session's DBAPI cursor) on real PostgreSQL: the same rows
and the same SQLAlchemy errors as SQLAlchemy's own execution."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from mlflow_gcp.server.store import _execute, _execute_plain


@pytest.fixture()
def engine(postgres_url):
    engine = sa.create_engine(postgres_url, pool_size=1, max_overflow=0)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS plain_t")
        conn.exec_driver_sql("CREATE TABLE plain_t (k text PRIMARY KEY, n int)")
    yield engine
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE plain_t")
    engine.dispose()


def _stored(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("SELECT k, n FROM plain_t ORDER BY k")]


def test_rows_as_sqlalchemy_gives_them(engine):
    with Session(engine) as s:
        _execute(s, "INSERT INTO plain_t VALUES ('a', 1), ('b', 2)")
        query, params = "SELECT k, n, n * 2 AS twice FROM plain_t WHERE n >= %s ORDER BY k", (1,)
        ours, theirs = _execute_plain(s, query, params).fetchall(), _execute(s, query, params).fetchall()
        assert [tuple(r) for r in ours] == [tuple(r) for r in theirs] == [("a", 1, 2), ("b", 2, 4)]
        assert [(r.k, r.twice) for r in ours] == [(r.k, r.twice) for r in theirs]
        assert _execute_plain(s, "SELECT n FROM plain_t WHERE k = %s", ("b",)).scalar() == 2
        assert _execute_plain(s, "SELECT n FROM plain_t WHERE k = 'z'").first() is None
        assert _execute_plain(s, "UPDATE plain_t SET n = n + 1").rowcount == 2
        # several statements: the last one's rows, as psycopg2 gives them
        assert _execute_plain(s, "SELECT 1; SELECT 100 %% 7").scalar() == 2  # "%%": as SQLAlchemy reads it
        with pytest.raises(sa.exc.ResourceClosedError):
            _execute_plain(s, "UPDATE plain_t SET n = n").first()


@pytest.mark.parametrize("statement, params", [
    ("INSERT INTO plain_t VALUES ('a', 1)", None),  # a unique violation
    ("SELECT nope FROM plain_t", None),  # a bad column
    ("SELECT 1 / %s", (0,)),  # a division by zero
])
def test_errors_as_sqlalchemy_raises_them(engine, statement, params):
    errors = []
    for run in (_execute, _execute_plain):
        with Session(engine) as s:
            _execute(s, "INSERT INTO plain_t VALUES ('a', 1) ON CONFLICT DO NOTHING")
            with pytest.raises(sa.exc.DBAPIError) as caught:
                run(s, statement, params)
            errors.append(caught.value)
    ours, theirs = errors[1], errors[0]
    assert type(ours) is type(theirs)
    assert type(ours.orig) is type(theirs.orig) and ours.orig.pgcode == theirs.orig.pgcode
    assert str(ours) == str(theirs)


def test_events_take_sqlalchemys_path(engine):
    seen = []
    event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    with Session(engine) as s:
        assert _execute_plain(s, "SELECT 42").scalar() == 42
    assert seen == ["SELECT 42"]


def test_each_transaction_finds_its_own_connection(engine):
    with Session(engine) as s:
        first = _execute_plain(s, "SELECT pg_current_xact_id()::text").scalar()
        assert _execute_plain(s, "SELECT pg_current_xact_id()::text").scalar() == first
        s.commit()
        second = _execute_plain(s, "SELECT pg_current_xact_id()::text").scalar()
        assert second != first
        _execute_plain(s, "INSERT INTO plain_t VALUES ('a', 1)")
        s.rollback()
        _execute_plain(s, "INSERT INTO plain_t VALUES ('b', 2)")
        s.commit()
    assert _stored(engine) == [("b", 2)]
