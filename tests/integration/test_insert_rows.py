"""store._insert_rows, the one renderer of every bulk write (metrics, params, tags, spans, trace tags
and metadata): values holding "%" (a span's text, "50%", "%s", "%(x)s") are stored as given, in its
plain, guarded and before/after forms, on real PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from mlflow_gcp.server.store import _execute, _insert_rows

VALUES = ["50%", "50% done", "a %s b", "%(x)s", "100%%", "%", "plain"]


@pytest.fixture()
def session(postgres_url):
    engine = sa.create_engine(postgres_url)
    with Session(engine) as s:
        _execute(s, "CREATE TEMP TABLE pct (v text)")
        yield s
    engine.dispose()


def _stored(session) -> list[str]:
    return [row[0] for row in _execute(session, "SELECT v FROM pct ORDER BY v").fetchall()]


def test_plain_insert_keeps_percent_signs(session):
    _insert_rows(session, ("INSERT INTO pct (v)", "", [(v,) for v in VALUES]))
    assert _stored(session) == sorted(VALUES)


def test_before_and_after_keep_percent_signs(session):
    got = _insert_rows(session, ("INSERT INTO pct (v)", "", [("%s in rows",)]),
                       before=[("INSERT INTO pct (v) VALUES (%s)", ("50% before",))],
                       after=[("SELECT count(*) FROM pct WHERE v LIKE %s", ("%\\%%",))]).scalar()
    assert got == 2
    assert _stored(session) == ["%s in rows", "50% before"]


def test_guarded_insert_keeps_percent_signs(session):
    state = _insert_rows(session, ("INSERT INTO pct (v)", "", [(v,) for v in VALUES]),
                         guard=("SELECT %s::text", "100% ready", "100% ready")).scalar()
    assert state == "100% ready"
    assert _stored(session) == sorted(VALUES)
