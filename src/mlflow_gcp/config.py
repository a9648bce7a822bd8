"""The deployment's desired state: the one place for names, defaults and limits.

Where a setting comes from, highest first:

1. command-line flags (`--project`, `--region`, and `--set section.key=value` for any field);
2. environment variables: `MLFLOW_GCP_<FIELD>` for top-level fields (`MLFLOW_GCP_PROJECT`) and
   `MLFLOW_GCP_<SECTION>__<FIELD>` for the others (`MLFLOW_GCP_DATABASE__TIER=db-g1-small`);
   lists are comma-separated, labels are `key=value,key=value`;
3. the config file: `--config FILE`, else `$MLFLOW_GCP_CONFIG`, else `./mlflow-gcp.toml`;
4. the defaults below (those of the old scripts where they were sound).

Everything is validated here, before any API call, and every problem is reported as
`field: message`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from mlflow_gcp import budget
from mlflow_gcp.errors import ConfigError

DEFAULT_CONFIG_FILE = "mlflow-gcp.toml"
CONFIG_ENV = "MLFLOW_GCP_CONFIG"
ENV_PREFIX = "MLFLOW_GCP_"

# The MLflow release the image ships (constraints.txt, the Dockerfile's ARG default); 3.17.0 is the
# oldest without known server CVEs.
MLFLOW_VERSION = "3.17.2"
MIN_MLFLOW_VERSION = (3, 17, 0)
# service.mlflow_version stays in the lock's minor series. The server reaches into MLflow internals
# (server/fastpath.py, store.py, app.py, migrate.py, artifacts_*.py): mlflow/server (UI bundle
# aside) and mlflow/store are byte for byte the same in 3.17.0, 3.17.1 and 3.17.2, with the same
# dependencies, while 3.18.0 rewrites handlers.py, sqlalchemy_store.py and the models, adds three
# migrations and a dependency the lock lacks. A new minor comes with a new mlflow-gcp release.
SUPPORTED_MLFLOW_SERIES = tuple(int(x) for x in MLFLOW_VERSION.split(".")[:2])

_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
# Cloud Run service and job names: lowercase letters, digits, hyphens; start with a letter.
_RUN_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$")
_SQL_INSTANCE_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_SA_ID_RE = re.compile(r"^[a-z]([a-z0-9-]{4,28}[a-z0-9])$")
_PG_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_BUCKET_PART_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$")
_LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
_MEMBER_RE = re.compile(r"^(user|group|serviceAccount|domain):[^\s:]+$")
_HHMM_RE = re.compile(r"^([01][0-9]|2[0-3]):00$")
_MEMORY_RE = re.compile(r"^[1-9][0-9]*(Mi|Gi)$")
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")

PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")
CLOUD_RUN_CPUS = ("1", "2", "4", "6", "8")
# Cloud Run's memory range (GiB) for each CPU count (docs: configuring/services/cpu and
# memory-limits); the 0.5 GiB floor is the second generation execution environment's.
CLOUD_RUN_MEMORY_GIB = {"1": (0.5, 4), "2": (0.5, 8), "4": (2, 16), "6": (4, 24), "8": (4, 32)}
WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
# Days of transaction logs (point-in-time recovery) each Cloud SQL edition keeps at most.
LOG_RETENTION_MAX_DAYS = {"ENTERPRISE": 7, "ENTERPRISE_PLUS": 35}


class _Section(BaseModel):
    # A misspelled key in the file is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServiceConfig(_Section):
    name: str = Field("mlflow-tracking", description="Cloud Run service name.")
    mlflow_version: str = Field(MLFLOW_VERSION, description="MLflow release the server image runs.")
    image: str | None = Field(
        None,
        description="Full image reference to deploy; empty means build ours into Artifact Registry.",
    )
    repository: str = Field("mlflow", description="Artifact Registry Docker repository for the image.")
    # At least 2: the running image and the one before it, which a rollback needs.
    images_kept: int = Field(
        5, ge=2, le=100,
        description="Most recent mlflow-gcp images the repository's cleanup policy keeps (older ones are deleted).",
    )
    service_account: str = Field(
        "mlflow-server",
        description="Account id of the server's own least-privilege service account.",
    )
    build_service_account: str = Field(
        "mlflow-builder",
        description="Account id of the service account Cloud Build builds the image as (least privilege).",
    )
    min_instances: int = Field(0, ge=0, le=100, description="Instances kept warm (0 = scale to zero).")
    max_instances: int = Field(10, ge=1, le=100, description="Upper bound on instances.")
    cpu: str = Field("1", description="vCPUs per instance (Cloud Run: 1, 2, 4, 6 or 8).")
    # 512Mi: one worker idles at ~161 MiB and peaked at 198 MiB under every bench load
    # (docs/benchmarks.md, "Cloud Run defaults"); the rest is room for spooled uploads.
    memory: str = Field("512Mi", description="Memory per instance, e.g. 512Mi or 1Gi (Cloud Run: 512Mi-4Gi "
                        "at 1 CPU, up to 8Gi at 2, 2-16Gi at 4, 4-24Gi at 6, 4-32Gi at 8).")
    workers: int = Field(1, ge=1, le=16, description="Server processes per instance.")
    concurrency: int = Field(80, ge=1, le=1000, description="Requests one instance serves at once.")
    # The maximum: a proxied artifact download is one request, and at 300 s a 5 GiB model would
    # need 18 MB/s sustained (docs/artifacts.md); a long limit costs nothing for short requests.
    timeout_seconds: int = Field(3600, ge=1, le=3600, description="Per-request timeout on Cloud Run (large proxied downloads are one request).")
    port: int = Field(8080, ge=1, le=65535, description="Container port the server listens on.")
    gateway: bool = Field(
        False,
        description="Turn on MLflow's AI gateway (/gateway/...: calls LLM providers with keys stored in "
        "the database). Off, its routes answer 404; on, `up` keeps the passphrase that encrypts those "
        "keys in Secret Manager (docs/security.md).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _RUN_NAME_RE.match(v):
            raise ValueError(
                "Cloud Run names are 1-49 lowercase letters, digits or hyphens, start with a letter "
                "and do not end with a hyphen"
            )
        return v

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str) -> str:
        if not re.match(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", v):
            raise ValueError("repository names are lowercase letters, digits and hyphens")
        return v

    @field_validator("service_account", "build_service_account")
    @classmethod
    def _sa(cls, v: str) -> str:
        if not _SA_ID_RE.match(v):
            raise ValueError(
                "service account ids are 6-30 lowercase letters, digits or hyphens, starting with a "
                "letter"
            )
        return v

    @field_validator("mlflow_version")
    @classmethod
    def _mlflow_version(cls, v: str) -> str:
        m = _VERSION_RE.match(v)
        if not m:
            raise ValueError("expected a release such as 3.17.2")
        version = tuple(int(x) for x in m.groups())
        if version < MIN_MLFLOW_VERSION:
            raise ValueError("MLflow below 3.17.0 has known server vulnerabilities")
        if version[:2] != SUPPORTED_MLFLOW_SERIES:
            series = ".".join(map(str, SUPPORTED_MLFLOW_SERIES))
            raise ValueError(
                f"this mlflow-gcp runs MLflow {series}.x only (its server relies on MLflow internals checked "
                f"for that series); for MLflow {v}, install the mlflow-gcp release that supports it and run "
                "`mlflow-gcp up`")
        return v

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: Any) -> str:
        v = str(v)
        if v not in CLOUD_RUN_CPUS:
            raise ValueError(f"expected one of {', '.join(CLOUD_RUN_CPUS)}")
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        if not _MEMORY_RE.match(v):
            raise ValueError("expected a size such as 512Mi or 2Gi")
        mib = int(v[:-2]) * (1024 if v.endswith("Gi") else 1)
        if not 512 <= mib <= 32 * 1024:
            raise ValueError("Cloud Run allows 512Mi to 32Gi")
        return v

    @model_validator(mode="after")
    def _instances(self) -> ServiceConfig:
        if self.min_instances > self.max_instances:
            raise ValueError("min_instances must not exceed max_instances")
        # One account for both would give the running server the right to push images.
        if self.build_service_account == self.service_account:
            raise ValueError("build_service_account must differ from service_account")
        low, high = CLOUD_RUN_MEMORY_GIB[self.cpu]
        gib = int(self.memory[:-2]) / (1 if self.memory.endswith("Gi") else 1024)
        if not low <= gib <= high:
            raise ValueError(f"Cloud Run gives cpu = \"{self.cpu}\" {low:g}Gi to {high:g}Gi of memory; "
                             f"change memory ({self.memory}) or cpu")
        return self


class AccessConfig(_Section):
    mode: Literal["private", "public"] = Field(
        "private",
        description="private: only members may invoke; public: anyone on the internet (warned).",
    )
    members: list[str] = Field(
        default_factory=list,
        description="Who may use the server: user:, group:, serviceAccount: or domain: members.",
    )

    @field_validator("members", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [m.strip() for m in v.split(",") if m.strip()]
        return v

    @field_validator("members")
    @classmethod
    def _members(cls, v: list[str]) -> list[str]:
        for m in v:
            if m in PUBLIC_MEMBERS:
                raise ValueError(
                    f"{m} makes the server public; set access.mode = \"public\" instead"
                )
            if not _MEMBER_RE.match(m):
                raise ValueError(
                    f"{m!r} is not a member; use user:EMAIL, group:EMAIL, serviceAccount:EMAIL "
                    "or domain:DOMAIN"
                )
        return list(dict.fromkeys(v))

    verify_identity: bool = Field(
        True,
        description="The server verifies each caller's Google ID token itself: runs and model "
        "versions name the caller and the request log names who changed what (docs/access.md).",
    )
    permissions: bool = Field(
        False,
        description="Per-experiment and per-model permissions inside MLflow (MLflow's auth app, "
        "Google identities as users); needs verify_identity.",
    )
    admins: list[str] = Field(
        default_factory=list,
        description="MLflow admins when permissions are on: user:EMAIL or serviceAccount:EMAIL.",
    )
    default_permission: Literal["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"] = Field(
        "READ",
        description="What a user may do with an experiment or model nobody granted them anything "
        "on (creators get MANAGE on their own).",
    )

    @field_validator("admins", mode="before")
    @classmethod
    def _split_admins(cls, v: Any) -> Any:
        return cls._split(v)

    @field_validator("admins")
    @classmethod
    def _admins(cls, v: list[str]) -> list[str]:
        emails = []
        for m in v:
            kind, _, email = m.partition(":")
            if kind not in ("user", "serviceAccount") or "@" not in email or not _MEMBER_RE.match(m):
                raise ValueError(f"{m!r} is not an identity; use user:EMAIL or serviceAccount:EMAIL")
            emails.append(f"{kind}:{email.lower()}")
        return list(dict.fromkeys(emails))

    @model_validator(mode="after")
    def _permissions_need_identity(self) -> "AccessConfig":
        if self.permissions and not self.verify_identity:
            raise ValueError("permissions = true needs verify_identity = true (permissions follow "
                             "the verified caller)")
        if self.permissions and self.mode == "public":
            raise ValueError("permissions = true needs a private server: a public one lets "
                             "callers in without a Google identity")
        return self

    @property
    def identities_verified(self) -> bool:
        """The server checks callers' ID tokens: on by default for a private server; a public
        one is for callers without tokens, so it verifies nobody."""
        return self.verify_identity and self.mode == "private"

    @property
    def admin_emails(self) -> list[str]:
        return [m.split(":", 1)[1] for m in self.admins]


class DatabaseConfig(_Section):
    instance: str = Field("mlflow-db", description="Cloud SQL instance name.")
    tier: str = Field("db-f1-micro", description="Cloud SQL machine tier; sets max_connections.")
    # validate_default: the checks against tier and backups run when the default is kept too.
    edition: Literal["ENTERPRISE", "ENTERPRISE_PLUS"] = Field(
        "ENTERPRISE", validate_default=True,
        description="Cloud SQL edition: ENTERPRISE has the shared-core and db-custom tiers, "
        "ENTERPRISE_PLUS only db-perf-optimized-N-<vCPUs>.",
    )
    version: str = Field("POSTGRES_15", description="PostgreSQL major version, e.g. POSTGRES_15.")
    database: str = Field("mlflow", description="Database that holds MLflow's schema.")
    user: str = Field("mlflow", description="Database user the server connects as.")
    disk_size_gb: int = Field(10, ge=10, le=65536, description="Initial SSD size (grows automatically).")
    backup_start_time: str = Field("03:00", description="Daily backup window start, HH:00 UTC.")
    # One more than the days of logs: Cloud SQL wants more retained backups than log days.
    backup_retention: int = Field(8, ge=1, le=365, description="Automated backups kept (1-365; more than log_retention_days).")
    point_in_time_recovery: bool = Field(True, description="Keep transaction logs for PITR.")
    log_retention_days: int = Field(
        7, ge=1, le=35, validate_default=True, description="Days of transaction logs for PITR: 1-7 (ENTERPRISE), 1-35 (ENTERPRISE_PLUS).")
    maintenance_day: str = Field("SUN", description="Weekly maintenance day (MON..SUN).")
    maintenance_hour: int = Field(4, ge=0, le=23, description="Maintenance hour, UTC.")
    deletion_protection: bool = Field(True, description="Refuse instance deletion until lifted.")
    private_ip: bool = Field(False, description="Private IP on a VPC instead of a public IP.")
    network: str | None = Field(
        None, description="VPC for private IP, e.g. projects/P/global/networks/default."
    )

    @field_validator("instance")
    @classmethod
    def _instance(cls, v: str) -> str:
        if not _SQL_INSTANCE_RE.match(v) or len(v) > 84:
            raise ValueError(
                "Cloud SQL instance names are lowercase letters, digits and hyphens, start with a "
                "letter, do not end with a hyphen, and are at most 84 characters"
            )
        return v

    @field_validator("tier")
    @classmethod
    def _tier(cls, v: str) -> str:
        budget.tier_max_connections(v)  # raises ValueError with the accepted forms
        return v

    @field_validator("edition")
    @classmethod
    def _edition(cls, v: str, info: ValidationInfo) -> str:
        tier = info.data.get("tier")
        if tier and budget.tier_edition(tier) != v:
            offers = "only db-perf-optimized-N-<vCPUs> tiers" if v == "ENTERPRISE_PLUS" else \
                "no db-perf-optimized tiers (they are ENTERPRISE_PLUS only)"
            raise ValueError(f"{v} has {offers}: database.tier {tier} needs edition {budget.tier_edition(tier)}")
        return v

    @field_validator("log_retention_days")
    @classmethod
    def _log_days(cls, v: int, info: ValidationInfo) -> int:
        edition = info.data.get("edition")
        top = LOG_RETENTION_MAX_DAYS.get(edition or "", 35)
        if v > top:
            raise ValueError(f"the {edition} edition keeps 1-{top} days of transaction logs"
                             + (" (35 needs database.edition = \"ENTERPRISE_PLUS\")" if top < 35 else ""))
        backups = info.data.get("backup_retention")
        if info.data.get("point_in_time_recovery") and backups is not None and backups <= v:
            raise ValueError(f"{v} days of transaction logs need more retained backups than that "
                             f"(Cloud SQL: backup retention must exceed log retention): set "
                             f"database.backup_retention to {v + 1} or more, or lower log_retention_days")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not re.match(r"^POSTGRES_(1[3-8])$", v):
            raise ValueError("expected POSTGRES_13 .. POSTGRES_18")
        return v

    @field_validator("database", "user")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not _PG_IDENT_RE.match(v):
            raise ValueError("expected a PostgreSQL name: letters, digits, _ or -, at most 63")
        return v

    @field_validator("backup_start_time")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM_RE.match(v):
            raise ValueError("expected a whole hour such as 03:00 (Cloud SQL backup windows)")
        return v

    @field_validator("maintenance_day", mode="before")
    @classmethod
    def _day(cls, v: Any) -> str:
        day = str(v).strip().upper()[:3]
        if day not in WEEKDAYS:
            raise ValueError(f"expected one of {', '.join(WEEKDAYS)}")
        return day

    @model_validator(mode="after")
    def _checks(self) -> DatabaseConfig:
        if self.private_ip and not self.network:
            raise ValueError("private_ip needs network (projects/P/global/networks/NAME)")
        return self

    @property
    def max_connections(self) -> int:
        return budget.tier_max_connections(self.tier)

    @property
    def maintenance_day_number(self) -> int:
        """Cloud SQL numbers days 1 (Monday) .. 7 (Sunday)."""
        return WEEKDAYS.index(self.maintenance_day) + 1


class LifecycleConfig(_Section):
    days: int = Field(90, ge=1, le=36500, description="Age in days at which the rule applies.")
    action: Literal["archive", "delete"] = Field(
        "archive",
        description="archive: move to a colder storage class (nothing is lost); delete: remove "
        "objects under `prefix` (never the whole artifact root).",
    )
    storage_class: Literal["NEARLINE", "COLDLINE", "ARCHIVE"] = Field(
        "NEARLINE", description="Target class when action is archive."
    )
    prefix: str | None = Field(
        None, description="Only objects under this prefix; required when action is delete."
    )

    @model_validator(mode="after")
    def _scoped_delete(self) -> LifecycleConfig:
        if self.action == "delete" and not (self.prefix or "").strip("/"):
            raise ValueError(
                "a delete rule over the whole bucket would delete artifacts that registered "
                "models still use; set prefix (e.g. \"scratch/\") or use action = \"archive\""
            )
        return self


class ArtifactsConfig(_Section):
    bucket: str | None = Field(None, description="GCS bucket; default <project>-mlflow-artifacts.")
    location: str | None = Field(None, description="Bucket location; default the region.")
    mode: Literal["proxied", "direct"] = Field(
        "proxied",
        description="proxied: uploads go through the server (clients need only invoker access); "
        "direct: clients write to the bucket with their own credentials.",
    )
    lifecycle: LifecycleConfig = Field(
        default_factory=LifecycleConfig, description="Age-based rule for old artifacts."
    )

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        if v is not None:
            check_bucket_name(v)
        return v


Labels = Annotated[dict[str, str], Field(description="Labels put on every resource.")]


class Config(_Section):
    """One deployment of mlflow-gcp."""

    project: str = Field(..., description="Google Cloud project id.")
    region: str = Field("europe-west9", description="Region of Cloud Run, Cloud SQL and the bucket.")
    labels: Labels = Field(default_factory=dict)
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="Cloud Run service.")
    access: AccessConfig = Field(default_factory=AccessConfig, description="Who may use it.")
    database: DatabaseConfig = Field(default_factory=DatabaseConfig, description="Cloud SQL.")
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig, description="GCS.")

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        if not _PROJECT_RE.match(v):
            raise ValueError(
                "project ids are 6-30 lowercase letters, digits or hyphens, start with a letter "
                "and do not end with a hyphen"
            )
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _REGION_RE.match(v):
            raise ValueError("expected a region such as europe-west9 or us-central1")
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_from_str(cls, v: Any) -> Any:
        if isinstance(v, str):
            pairs = [p for p in v.split(",") if p.strip()]
            if not all("=" in p for p in pairs):
                raise ValueError("expected key=value,key=value")
            return dict(p.strip().split("=", 1) for p in pairs)
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _LABEL_KEY_RE.match(key):
                raise ValueError(f"label key {key!r}: lowercase letters, digits, _ or -, from a letter")
            if not _LABEL_VALUE_RE.match(value):
                raise ValueError(f"label {key!r}: values are lowercase letters, digits, _ or -")
        return v

    @model_validator(mode="after")
    def _cross(self) -> Config:
        if self.artifacts.bucket is None:
            # Validated here so a long project id gives a clear error about the derived name.
            check_bucket_name(self.bucket_name, derived=True)
        return self

    # Derived names: every resource name is decided here and nowhere else.
    @property
    def bucket_name(self) -> str:
        return self.artifacts.bucket or f"{self.project}-mlflow-artifacts"

    @property
    def bucket_location(self) -> str:
        return (self.artifacts.location or self.region).upper()

    @property
    def artifact_root(self) -> str:
        return f"gs://{self.bucket_name}"

    @property
    def instance_connection_name(self) -> str:
        return f"{self.project}:{self.region}:{self.database.instance}"

    @property
    def server_service_account_email(self) -> str:
        return f"{self.service.service_account}@{self.project}.iam.gserviceaccount.com"

    @property
    def builder_service_account_email(self) -> str:
        return f"{self.service.build_service_account}@{self.project}.iam.gserviceaccount.com"

    @property
    def secret_id(self) -> str:
        return f"{self.service.name}-db-password"

    @property
    def gateway_secret_id(self) -> str:
        return f"{self.service.name}-gateway-passphrase"

    @property
    def migrate_job_name(self) -> str:
        return f"{self.service.name}-migrate"

    @property
    def image_uri(self) -> str:
        if self.service.image:
            return self.service.image
        # The tag names the server's source too: a new mlflow-gcp release with the same MLflow
        # is a new image, which `up` builds and rolls out.
        from mlflow_gcp import image_source

        return (
            f"{self.region}-docker.pkg.dev/{self.project}/{self.service.repository}/"
            f"mlflow-gcp:{self.service.mlflow_version}-{image_source.digest()}"
        )

    @property
    def all_labels(self) -> dict[str, str]:
        return {"managed-by": "mlflow-gcp", **self.labels}

    def pool(self) -> budget.Pool:
        """Pool sizes that fit the tier; ConfigError naming the knob when none does."""
        try:
            extra = budget.PERMISSION_STORE_CONNECTIONS if self.access.permissions else 0
            return budget.check(
                self.database.tier, self.service.max_instances, self.service.workers,
                extra_per_worker=extra,
            )
        except ValueError as err:
            from mlflow_gcp.errors import BudgetError

            raise BudgetError([("service.max_instances", str(err))]) from None

    def connections_per_instance(self) -> int:
        return budget.connections_per_instance(
            self.database.max_connections, self.service.max_instances
        )


def check_bucket_name(name: str, derived: bool = False) -> None:
    """Google's bucket naming rules; ValueError with the rule that is broken."""
    where = " (derived from the project id; set artifacts.bucket)" if derived else ""
    if not 3 <= len(name) <= (222 if "." in name else 63):
        raise ValueError(f"bucket {name!r} must be 3-63 characters{where}")
    if name.startswith("goog") or "google" in name or "g00gle" in name:
        raise ValueError(f"bucket {name!r} must not start with goog or contain google{where}")
    for part in name.split("."):
        if not _BUCKET_PART_RE.match(part) or len(part) > 63:
            raise ValueError(
                f"bucket {name!r}: lowercase letters, digits, -, _ and ., starting and ending with "
                f"a letter or digit{where}"
            )
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return
    raise ValueError(f"bucket {name!r} must not look like an IP address")


# ---------------------------------------------------------------- loading


def config_path(flag: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(flag or env.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)


def _field_paths() -> dict[str, tuple[str, ...]]:
    """ENV-style name -> field path, e.g. DATABASE__TIER -> ("database", "tier")."""
    paths: dict[str, tuple[str, ...]] = {}

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, prefix + (name,))
            else:
                paths["__".join(prefix + (name,)).upper()] = prefix + (name,)

    walk(Config, ())
    return paths


FIELD_PATHS = _field_paths()


def _set(data: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        node = data.get(key)
        if not isinstance(node, dict):
            node = data[key] = {}
        data = node
    data[path[-1]] = value


def _merge(base: dict, top: Mapping) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def env_overrides(env: Mapping[str, str]) -> dict:
    """Settings from MLFLOW_GCP_* variables; other MLFLOW_GCP_* names (CONFIG, API_ROOT) are not
    deployment settings and are left alone."""
    data: dict = {}
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX):] in FIELD_PATHS:
            _set(data, FIELD_PATHS[name[len(ENV_PREFIX):]], value)
    return data


def parse_set(assignments: list[str] | tuple[str, ...]) -> dict:
    """`--set section.key=value` flags as a nested dict; ConfigError for an unknown key."""
    data: dict = {}
    problems = []
    for item in assignments:
        key, sep, value = item.partition("=")
        path = tuple(key.strip().split("."))
        if not sep or "__".join(path).upper() not in FIELD_PATHS:
            problems.append((key.strip() or item, "unknown setting; expected section.key=value"))
            continue
        _set(data, path, value)
    if problems:
        raise ConfigError(problems)
    return data


def read_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ConfigError([(str(path), f"cannot read: {err.strerror}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([(str(path), f"not valid TOML: {err}")]) from None


def from_dict(data: Mapping) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_problems(err)) from None


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling)"
        elif e["type"] == "missing":
            msg = "required" + (
                " (mlflow-gcp init --project P writes it)" if loc == "project" else ""
            )
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append((loc, msg))
    return out


def load(
    path: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping | None = None,
    require_file: bool = False,
) -> Config:
    """The validated Config from defaults < file < environment < flags (`overrides`)."""
    env = os.environ if env is None else env
    file = config_path(path, env)
    if require_file and not file.exists():
        raise ConfigError(
            [(str(file), "no such file")],
            hint="run `mlflow-gcp init --project PROJECT` or pass --config FILE",
        )
    data = read_file(file)
    data = _merge(data, env_overrides(env))
    data = _merge(data, overrides or {})
    return from_dict(data)


def to_toml(config: Config) -> str:
    """The settings that differ from the defaults, plus project and region, as TOML."""
    import tomli_w

    data = config.model_dump(exclude_defaults=True, exclude_none=True)
    data = {"project": config.project, "region": config.region, **data}
    return tomli_w.dumps(data)
