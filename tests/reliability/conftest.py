"""One reliability stack (private PostgreSQL, GCS emulator, our server, front) per session.

The stack needs PostgreSQL 15's binaries (initdb, pg_ctl) rather than the shared server: a test
that restarts or starves PostgreSQL must not do it to the other engineers' database. Without
them the tests skip naming postgres, or fail when MLFLOW_GCP_REQUIRE_POSTGRES=1 (CI).
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import REQUIRE_POSTGRES_ENV
from tests.reliability import scenarios
from tests.reliability.stack import PG_BIN


def require_private_postgres() -> None:
    if not (PG_BIN / "initdb").exists():
        reason = f"postgres 15 binaries not found in {PG_BIN} (needed for a private PostgreSQL)"
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_POSTGRES_ENV}=1)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def rel_stack():
    require_private_postgres()
    with scenarios.ReliabilityStack(workers=2) as stack:
        yield stack
