"""Several server instances on a PostgreSQL whose max_connections is db-f1-micro's (25), each with
the share mlflow_gcp.budget gives it (DB_CONNECTIONS): under 16 concurrent clients, not one
"remaining connection slots" error, and the peak of client connections within the budget.

The server connects as a non-superuser (as on Cloud SQL), so PostgreSQL's reserved superuser
slots apply exactly as they would there.
"""

from __future__ import annotations

import pytest

from mlflow_gcp import budget

from tests.reliability import scenarios, workload
from tests.reliability.conftest import require_private_postgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

INSTANCES, WORKERS = 2, 1


def test_instances_within_the_small_tier_budget_never_run_out_of_slots():
    require_private_postgres()
    shape = workload.Shape(clients=16, runs=1, params=5, batches=3, metrics=20, artifacts=1)
    f = scenarios.connection_budget(shape, INSTANCES, WORKERS)
    assert f.slot_errors == 0 and f.user_errors == 0, f.errors
    assert f.lost == 0 and f.duplicated == 0 and f.verification["stored_runs"] == 16
    share = budget.connections_per_instance(budget.SHARED_CORE_TIERS["db-f1-micro"], INSTANCES)
    # Our sampler's own connection is excluded; the servers never hold more than their shares.
    assert 0 < f.peak_connections <= INSTANCES * share <= f.max_connections - budget.RESERVED_CONNECTIONS
