"""A monthly cost estimate of a deployment, from a dated list-price table.

PRICES_AS_OF: Google Cloud list prices in USD for us-central1 (Iowa), as published on the pricing
pages of Cloud SQL, Cloud Run, Cloud Storage, Secret Manager and Artifact Registry. Other regions
cost the same or up to ~20% more: the estimate uses these figures everywhere and says so. Usage
that depends on traffic (Cloud Run request time, egress, operations) is not estimated: with
min_instances = 0 an idle server costs nothing on Cloud Run.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_gcp import budget
from mlflow_gcp import config as config_mod

PRICES_AS_OF = "2025-06"
PRICE_REGION = "us-central1"
HOURS_PER_MONTH = 730
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600

# Cloud SQL for PostgreSQL, Enterprise edition, per hour.
SQL_SHARED_CORE_HOURLY = {"db-f1-micro": 0.0105, "db-g1-small": 0.0350}
SQL_VCPU_HOURLY = {"ENTERPRISE": 0.0413, "ENTERPRISE_PLUS": 0.0537}
SQL_GB_RAM_HOURLY = {"ENTERPRISE": 0.0070, "ENTERPRISE_PLUS": 0.0091}
SQL_SSD_GB_MONTH = 0.17
SQL_BACKUP_GB_MONTH = 0.08
# Cloud Run idle minimum instances (request-based billing), per second.
RUN_IDLE_VCPU_SECOND = 0.0000025
RUN_IDLE_GIB_SECOND = 0.0000025
# Cloud Run memory while serving (request-based billing, Tier 1), per GiB-second.
RUN_ACTIVE_GIB_SECOND = 0.0000025
# The memory default before issue 17 cut a worker's idle RSS below 200 MiB (config.py).
FORMER_DEFAULT_GIB = 1.0
GCS_STANDARD_GB_MONTH = 0.020
SECRET_VERSION_MONTH = 0.06
REGISTRY_GB_MONTH = 0.10
REGISTRY_FREE_GB = 0.5

# Sizes nobody knows before the server is used.
ASSUMED_ARTIFACT_GB = 10
# Measured (docs/server.md, "The image"): gzipped layers as the registry stores them. A new
# mlflow-gcp release or MLflow version rebuilds the dependencies' layer, so each kept image is
# counted whole (an upper bound: shared layers are stored once).
IMAGE_GB = 0.36


@dataclass(frozen=True)
class Line:
    component: str
    monthly_usd: float
    basis: str


@dataclass(frozen=True)
class Estimate:
    lines: tuple[Line, ...]
    assumptions: tuple[str, ...]

    @property
    def total(self) -> float:
        return round(sum(line.monthly_usd for line in self.lines), 2)

    def as_dict(self) -> dict:
        return {
            "currency": "USD",
            "prices_as_of": PRICES_AS_OF,
            "monthly_total": self.total,
            "lines": [{"component": x.component, "monthly": round(x.monthly_usd, 2), "basis": x.basis} for x in self.lines],
            "assumptions": list(self.assumptions),
        }


def _sql_hourly(tier: str, edition: str) -> float:
    if tier in SQL_SHARED_CORE_HOURLY:
        return SQL_SHARED_CORE_HOURLY[tier]
    cpus, mem_mb = budget.tier_shape(tier)
    return cpus * SQL_VCPU_HOURLY[edition] + mem_mb / 1024 * SQL_GB_RAM_HOURLY[edition]


def _gib(memory: str) -> float:
    return int(memory[:-2]) / (1 if memory.endswith("Gi") else 1024)


def estimate(cfg: config_mod.Config) -> Estimate:
    db, svc = cfg.database, cfg.service
    hourly = _sql_hourly(db.tier, db.edition)
    lines = [
        Line("Cloud SQL instance", hourly * HOURS_PER_MONTH, f"{db.tier} at ${hourly:.4f}/hour, always on"),
        Line("Cloud SQL storage", db.disk_size_gb * SQL_SSD_GB_MONTH, f"{db.disk_size_gb} GB SSD at ${SQL_SSD_GB_MONTH}/GB-month"),
        Line("Cloud SQL backups", db.disk_size_gb * SQL_BACKUP_GB_MONTH,
             f"about {db.disk_size_gb} GB of backups at ${SQL_BACKUP_GB_MONTH}/GB-month"),
    ]
    idle = svc.min_instances * SECONDS_PER_MONTH * (int(svc.cpu) * RUN_IDLE_VCPU_SECOND + _gib(svc.memory) * RUN_IDLE_GIB_SECOND)
    lines.append(Line(
        "Cloud Run idle instances", idle,
        "0 when min_instances = 0 (scale to zero)" if not svc.min_instances
        else f"{svc.min_instances} warm instance(s) x {svc.cpu} vCPU / {svc.memory}",
    ))
    lines.append(Line("Cloud Storage artifacts", ASSUMED_ARTIFACT_GB * GCS_STANDARD_GB_MONTH,
                      f"{ASSUMED_ARTIFACT_GB} GB Standard at ${GCS_STANDARD_GB_MONTH}/GB-month"))
    lines.append(Line("Secret Manager", SECRET_VERSION_MONTH, "1 active secret version"))
    if not svc.image:
        stored = svc.images_kept * IMAGE_GB
        lines.append(Line("Artifact Registry", max(0.0, stored - REGISTRY_FREE_GB) * REGISTRY_GB_MONTH,
                          f"up to {svc.images_kept} kept images x {IMAGE_GB} GB, first {REGISTRY_FREE_GB} GB free"))
    assumptions = [
        f"list prices of {PRICES_AS_OF} for {PRICE_REGION}, USD, before discounts and taxes",
        f"artifacts: {ASSUMED_ARTIFACT_GB} GB (yours will differ)",
        "Cloud Run request time, network egress and Cloud Build minutes (first 2,500/month free) not included",
    ]
    note = memory_saving(svc.memory)
    if note:
        assumptions.append(note)
    if cfg.region != PRICE_REGION:
        assumptions.insert(0, f"{cfg.region} priced as {PRICE_REGION} (no regional price table here; may be up to ~20% more)")
    return Estimate(tuple(lines), tuple(assumptions))


def memory_saving(memory: str) -> str | None:
    """What `memory` saves against the former 1Gi default, per instance-hour billed (serving
    requests, or kept warm); None when it saves nothing."""
    saved_gib = FORMER_DEFAULT_GIB - _gib(memory)
    if saved_gib <= 0:
        return None
    hourly = saved_gib * RUN_ACTIVE_GIB_SECOND * 3600
    return (f"Cloud Run memory {memory}: ${hourly:.4f} less per instance-hour billed than 1Gi "
            f"(${hourly * HOURS_PER_MONTH:.2f}/month for an instance busy or warm all month)")
