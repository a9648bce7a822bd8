"""The database connection budget: the one place that does its arithmetic.

Every server instance runs `workers` processes; each process fills `ENGINES_PER_WORKER` pools
(MLflow's tracking, model-registry and jobs engines share one, see below), and each pool holds up to
pool_size + max_overflow connections. All instances together, plus a reserve for
the migration job and an operator's psql session, must fit in the tier's max_connections, or small
tiers fail under load with "remaining connection slots are reserved".

Imported by both the control plane (plan refuses a config that does not fit) and the server
(which sizes its pools from the per-instance share it is given), so it depends on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

# Connections kept free of our server's pools: 3 that Cloud SQL keeps for its superuser
# (superuser_reserved_connections) and 2 for the migration job and one admin session.
RESERVED_CONNECTIONS = 5

# Connection pools one MLflow server process (uvicorn worker) fills. MLflow itself opens one engine,
# each with its own pool, per store: tracking, model registry, and jobs as soon as a /jobs endpoint
# is called even with job execution off (3 measured in pg_stat_activity under load, MLflow 3.17.2).
# Our server's SQLAlchemy plugin (server/pool_plugin.py) makes them share one pool per process, and
# the `mlflow server` launcher process holds none (NullPool); tests/integration/test_server_storage.py
# checks both against pg_stat_activity.
ENGINES_PER_WORKER = 1

# Connections one pool needs at the least: a single MLflow request can hold two at once
# (SqlAlchemyStore.log_batch opens a session inside its session), so a pool of one deadlocks until
# SQLAlchemy's 30 s timeout. The server admits pool // 2 database requests at once per worker.
MIN_POOL_CONNECTIONS = 2

# Default max_connections of Cloud SQL for PostgreSQL by machine memory (Cloud SQL quotas page).
_MAX_CONNECTIONS_BY_MEMORY_MB = (
    (6 * 1024 - 1, 100),  # 3.75 GB up to 6 GB
    (7680 - 1, 200),  # 6 GB up to 7.5 GB
    (15 * 1024 - 1, 400),
    (30 * 1024 - 1, 500),
    (60 * 1024 - 1, 600),
    (120 * 1024 - 1, 800),
)

SHARED_CORE_TIERS = {"db-f1-micro": 25, "db-g1-small": 50}
# Cloud SQL Enterprise Plus machines (db-perf-optimized-N-<vCPUs>): 8 GB per vCPU, 864 GB at 128.
PERF_OPTIMIZED_PREFIX = "db-perf-optimized-N-"
PERF_OPTIMIZED_CPUS = (2, 4, 8, 16, 32, 48, 64, 80, 96, 128)


def tier_shape(tier: str) -> tuple[int, int] | None:
    """(vCPUs, memory MB) of a dedicated-core tier; None for a shared-core one; ValueError for an
    unknown tier."""
    if tier in SHARED_CORE_TIERS:
        return None
    if tier.startswith(PERF_OPTIMIZED_PREFIX) and tier[len(PERF_OPTIMIZED_PREFIX):].isdigit():
        cpus = int(tier[len(PERF_OPTIMIZED_PREFIX):])
        if cpus not in PERF_OPTIMIZED_CPUS:
            raise ValueError(f"{tier}: Enterprise Plus machines have {', '.join(map(str, PERF_OPTIMIZED_CPUS))} vCPUs")
        return cpus, (864 if cpus == 128 else 8 * cpus) * 1024
    parts = tier.split("-")
    # db-custom-<vCPUs>-<memory MB>
    if len(parts) == 4 and parts[:2] == ["db", "custom"] and parts[2].isdigit() and parts[3].isdigit():
        cpus, memory_mb = int(parts[2]), int(parts[3])
        if cpus < 1 or memory_mb < 3840:
            raise ValueError(f"{tier} is below Cloud SQL's smallest custom machine (1 vCPU, 3840 MB)")
        return cpus, memory_mb
    raise ValueError(
        f"unknown tier {tier!r}; use db-f1-micro, db-g1-small or db-custom-<vCPUs>-<memory MB> "
        f"(edition ENTERPRISE), or {PERF_OPTIMIZED_PREFIX}<vCPUs> (edition ENTERPRISE_PLUS)"
    )


def tier_edition(tier: str) -> str:
    """The Cloud SQL edition that offers `tier`: Enterprise Plus has only its perf-optimized
    machines, which Enterprise lacks."""
    return "ENTERPRISE_PLUS" if tier.startswith(PERF_OPTIMIZED_PREFIX) else "ENTERPRISE"


def tier_max_connections(tier: str) -> int:
    """max_connections Cloud SQL sets by default for `tier`; ValueError for an unknown tier."""
    shape = tier_shape(tier)
    if shape is None:
        return SHARED_CORE_TIERS[tier]
    memory_mb = shape[1]
    for limit, conns in _MAX_CONNECTIONS_BY_MEMORY_MB:
        if memory_mb <= limit:
            return conns
    return 1000


@dataclass(frozen=True)
class Pool:
    """SQLAlchemy pool settings for every engine of one server process."""

    pool_size: int
    max_overflow: int

    @property
    def per_engine(self) -> int:
        return self.pool_size + self.max_overflow


def connections_per_instance(max_connections: int, max_instances: int) -> int:
    """The share of one instance once the reserve is set aside (may be 0 when it does not fit)."""
    return max(0, (max_connections - RESERVED_CONNECTIONS) // max(1, max_instances))


# With access.permissions, each worker also holds a pool of this many connections to the
# permission store, its own database (server/permissions.py).
PERMISSION_STORE_CONNECTIONS = 2


def pool_for(connections: int, workers: int, engines: int = ENGINES_PER_WORKER) -> Pool:
    """Largest pool per engine such that workers x engines x pool fits in `connections`.

    Raises ValueError when not even MIN_POOL_CONNECTIONS per engine fit.
    """
    per_engine = connections // (workers * engines)
    if per_engine < MIN_POOL_CONNECTIONS:
        raise ValueError(
            f"{connections} connection(s) cannot give {workers} worker(s) x {engines} pool(s) "
            f"the {MIN_POOL_CONNECTIONS} connections each that MLflow needs"
        )
    # All of it as pool_size, no overflow: QueuePool opens connections only on demand anyway, and
    # an overflow connection is closed as soon as it is returned, so a busy worker would open and
    # close one per request: a PostgreSQL backend fork each time (measured: more CPU in
    # connection set-up than in the queries under 16 clients). The budget already counts them all.
    return Pool(pool_size=per_engine, max_overflow=0)


def check(tier: str, max_instances: int, workers: int, engines: int = ENGINES_PER_WORKER,
          extra_per_worker: int = 0) -> Pool:
    """The pool that fits, or ValueError that names the knob to turn. `extra_per_worker`:
    connections each worker holds outside the pool (PERMISSION_STORE_CONNECTIONS)."""
    max_conn = tier_max_connections(tier)
    share = connections_per_instance(max_conn, max_instances)
    need = workers * (engines * MIN_POOL_CONNECTIONS + extra_per_worker)
    if share >= need:
        return pool_for(share - workers * extra_per_worker, workers, engines)
    fits_instances = (max_conn - RESERVED_CONNECTIONS) // need
    advice = [f"lower max_instances to {fits_instances}" if fits_instances >= 1 else None]
    if workers > 1:
        advice.append("use fewer workers")
    advice.append(f"choose a tier with more than {max_conn} connections")
    raise ValueError(
        f"{max_instances} instance(s) x {workers} worker(s) x {engines} engines need at least "
        f"{max_instances * need + RESERVED_CONNECTIONS} connections but {tier} allows {max_conn}: "
        + ", or ".join(a for a in advice if a)
    )
