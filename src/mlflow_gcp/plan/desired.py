"""The desired Google resources of a deployment, as API request bodies (pure functions).

Field names are those of the discovery documents (sqladmin v1, storage v1, run v2, ...); a unit
test checks every key of every body against them.
"""

from __future__ import annotations

import re

from mlflow_gcp.config import Config
# The server's variable names, one source of truth (both modules are light: stdlib only).
from mlflow_gcp.server import identity, permissions

# Every API `up` calls, plus Logging (Cloud Run writes there) and IAM Credentials (the server signs
# artifact URLs through signBlob).
REQUIRED_SERVICES = (
    "cloudresourcemanager.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "secretmanager.googleapis.com",
    "sqladmin.googleapis.com",
    "storage.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "run.googleapis.com",
    "logging.googleapis.com",
)

CONTAINER_NAME = "mlflow"
CLOUDSQL_VOLUME = "cloudsql"
CLOUDSQL_MOUNT = "/cloudsql"
# Google's default soft-delete window; set explicitly so a bucket where it was switched off shows.
SOFT_DELETE_SECONDS = 7 * 24 * 3600
# Cloud Build sources are staged in the artifact bucket under this prefix and expire after a month.
BUILD_PREFIX = "mlflow-gcp-build/"
BUILD_SOURCE_DAYS = 30
# Parts of multipart artifact uploads (server/artifacts_gcs.py UPLOADS_PREFIX): composed and
# deleted within minutes; a client killed mid-upload leaves them, so they go after a day.
UPLOAD_PARTS_PREFIX = "mlflow-gcp-uploads/"
UPLOAD_PARTS_DAYS = 1
# The startup probe allows 5 s x 48 = 4 minutes: a cold start waits for Cloud SQL and the schema check.
PROBE_PERIOD_SECONDS = 5
PROBE_FAILURES = 48
# The image package `up` builds (config.image_uri) and its cleanup policies' ids. A version
# younger than a week is never deleted, whatever images_kept says: a burst of builds from an
# edited checkout does not push out the image that is serving.
IMAGE_PACKAGE = "mlflow-gcp"
IMAGE_DELETE_AFTER_DAYS = 7
CLEANUP_DELETE_ID = "mlflow-gcp-delete-old"
CLEANUP_KEEP_ID = "mlflow-gcp-keep-recent"
# Connections the migration job may open (budget.RESERVED_CONNECTIONS keeps 2 for it).
JOB_DB_CONNECTIONS = 2

# API field path -> the config setting it comes from, for plan output.
FIELD_LABELS = {
    "settings.tier": "database.tier",
    "settings.edition": "database.edition",
    "settings.deletionProtectionEnabled": "database.deletion_protection",
    "settings.backupConfiguration.startTime": "database.backup_start_time",
    "settings.backupConfiguration.pointInTimeRecoveryEnabled": "database.point_in_time_recovery",
    "settings.backupConfiguration.transactionLogRetentionDays": "database.log_retention_days",
    "settings.backupConfiguration.backupRetentionSettings.retainedBackups": "database.backup_retention",
    "settings.maintenanceWindow.day": "database.maintenance_day",
    "settings.maintenanceWindow.hour": "database.maintenance_hour",
    "invokerIamDisabled": "access.mode",
    "template.scaling.maxInstanceCount": "service.max_instances",
    "template.scaling.minInstanceCount": "service.min_instances",
    "template.maxInstanceRequestConcurrency": "service.concurrency",
    "template.timeout": "service.timeout_seconds",
    "template.containers[mlflow].resources.limits.cpu": "service.cpu",
    "template.containers[mlflow].resources.limits.memory": "service.memory",
    "template.containers[mlflow].image": "service.image",
    "lifecycle.rule": "artifacts.lifecycle",
    "cleanupPolicies.mlflow-gcp-keep-recent.mostRecentVersions.keepCount": "service.images_kept",
    "template.containers[mlflow].env[DB_CONNECTIONS].value": "connection budget per instance",
    "template.containers[mlflow].env[WORKERS].value": "service.workers",
}


_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+")


def mlflow_version_of(image: str | None, env: list[dict] | None = None) -> str | None:
    """The MLflow release an image runs: an MLFLOW_VERSION env var, else the image tag, which is
    `3.17.2` (images built before the tag named the source) or `3.17.2-<source digest>`."""
    for item in env or []:
        if item.get("name") == "MLFLOW_VERSION" and item.get("value"):
            return item["value"]
    if not image:
        return None
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    tag = name.split(":", 1)[1] if ":" in name else ""
    m = _VERSION_RE.match(tag)
    return m.group(0) if m else None


def sql_instance(cfg: Config) -> dict:
    db = cfg.database
    ip: dict = {
        "ipv4Enabled": not db.private_ip,
        # ENCRYPTED_ONLY with requireSsl false is the documented PostgreSQL pair for "TLS only,
        # no client certificates" (the Cloud SQL connector on Cloud Run brings its own).
        "sslMode": "ENCRYPTED_ONLY",
        "requireSsl": False,
        "authorizedNetworks": [],
    }
    if db.private_ip:
        ip["privateNetwork"] = db.network
    backup = {
        "enabled": True,
        "startTime": db.backup_start_time,
        "pointInTimeRecoveryEnabled": db.point_in_time_recovery,
        "backupRetentionSettings": {"retainedBackups": db.backup_retention, "retentionUnit": "COUNT"},
    }
    if db.point_in_time_recovery:
        backup["transactionLogRetentionDays"] = db.log_retention_days
    return {
        "name": db.instance,
        "project": cfg.project,
        "region": cfg.region,
        "databaseVersion": db.version,
        "settings": {
            "tier": db.tier,
            "edition": db.edition,
            "availabilityType": "ZONAL",
            "dataDiskType": "PD_SSD",
            "dataDiskSizeGb": str(db.disk_size_gb),
            "storageAutoResize": True,
            "deletionProtectionEnabled": db.deletion_protection,
            "backupConfiguration": backup,
            "maintenanceWindow": {"day": db.maintenance_day_number, "hour": db.maintenance_hour},
            "ipConfiguration": ip,
            "userLabels": cfg.all_labels,
        },
    }


# Set at creation only: the disk grows by itself, availability is a later choice.
SQL_CREATE_ONLY = frozenset({"settings.dataDiskSizeGb", "settings.availabilityType", "settings.dataDiskType"})
# Cannot change in place: a different value means this is not our instance.
SQL_IMMUTABLE = ("databaseVersion", "region")


def lifecycle_rules(cfg: Config) -> list[dict]:
    lc = cfg.artifacts.lifecycle
    condition: dict = {"age": lc.days}
    if lc.prefix:
        condition["matchesPrefix"] = [lc.prefix]
    if lc.action == "archive":
        condition["matchesStorageClass"] = ["STANDARD"]
        rule = {"action": {"type": "SetStorageClass", "storageClass": lc.storage_class}, "condition": condition}
    else:
        rule = {"action": {"type": "Delete"}, "condition": condition}
    staging = {
        "action": {"type": "Delete"},
        "condition": {"age": BUILD_SOURCE_DAYS, "matchesPrefix": [BUILD_PREFIX]},
    }
    parts = {
        "action": {"type": "Delete"},
        "condition": {"age": UPLOAD_PARTS_DAYS, "matchesPrefix": [UPLOAD_PARTS_PREFIX]},
    }
    return [rule, staging, parts]


def bucket(cfg: Config) -> dict:
    return {
        "name": cfg.bucket_name,
        "location": cfg.bucket_location,
        "storageClass": "STANDARD",
        "labels": cfg.all_labels,
        "iamConfiguration": {
            "uniformBucketLevelAccess": {"enabled": True},
            "publicAccessPrevention": "enforced",
        },
        "softDeletePolicy": {"retentionDurationSeconds": str(SOFT_DELETE_SECONDS)},
        "lifecycle": {"rule": lifecycle_rules(cfg)},
    }


BUCKET_CREATE_ONLY = frozenset({"storageClass"})
BUCKET_IMMUTABLE = ("location",)


def secret(cfg: Config) -> dict:
    return {"replication": {"automatic": {}}, "labels": cfg.all_labels}


def service_account(cfg: Config) -> dict:
    return {
        "displayName": f"MLflow server {cfg.service.name}",
        "description": "Runs the MLflow tracking server (managed by mlflow-gcp)",
    }


def builder_service_account(cfg: Config) -> dict:
    return {
        "displayName": f"MLflow image builder {cfg.service.name}",
        "description": "Builds the MLflow server image on Cloud Build (managed by mlflow-gcp)",
    }


def repository(cfg: Config) -> dict:
    return {"format": "DOCKER", "description": "MLflow server images (mlflow-gcp)", "labels": cfg.all_labels,
            **repository_cleanup(cfg)}


def repository_cleanup(cfg: Config) -> dict:
    """Artifact Registry cleanup policies: delete our image versions once they are both older than
    IMAGE_DELETE_AFTER and outside the service.images_kept most recent. Google applies KEEP over
    DELETE when a version matches both, so the newest ones (the running image and the one a
    rollback needs) stay whatever their age. Both are limited to our package: other images
    someone keeps in the same repository are not ours to delete."""
    return {
        "cleanupPolicies": {
            CLEANUP_DELETE_ID: {
                "id": CLEANUP_DELETE_ID,
                "action": "DELETE",
                "condition": {
                    "tagState": "ANY",
                    "olderThan": f"{IMAGE_DELETE_AFTER_DAYS * 86400}s",
                    "packageNamePrefixes": [IMAGE_PACKAGE],
                },
            },
            CLEANUP_KEEP_ID: {
                "id": CLEANUP_KEEP_ID,
                "action": "KEEP",
                "mostRecentVersions": {"packageNamePrefixes": [IMAGE_PACKAGE], "keepCount": cfg.service.images_kept},
            },
        },
        # False is what enforces the policies; true would only log what they would delete.
        "cleanupPolicyDryRun": False,
    }


def run_app_host(cfg: Config, project_number: str) -> str:
    """The deterministic URL host Cloud Run gives a service: known before the first deploy."""
    return f"{cfg.service.name}-{project_number}.{cfg.region}.run.app"


def allowed_hosts(cfg: Config, project_number: str | None, urls: list[str] | tuple[str, ...] = ()) -> list[str]:
    from urllib.parse import urlparse

    hosts = {urlparse(u).hostname for u in urls if u}
    if project_number:
        hosts.add(run_app_host(cfg, project_number))
    return sorted(h for h in hosts if h)


def _secret_ref(secret_id: str) -> dict:
    # The bare name is Cloud Run's form for a secret in the service's own project.
    return {"secretKeyRef": {"secret": secret_id, "version": "latest"}}


def _gateway_env(cfg: Config) -> list[dict]:
    """MLflow's AI gateway, off unless asked (server/guard.py); on, with the deployment's own
    passphrase for the provider keys it stores, never MLflow's public default."""
    if not cfg.service.gateway:
        return []
    return [{"name": "GATEWAY", "value": "on"},
            {"name": "MLFLOW_CRYPTO_KEK_PASSPHRASE", "valueSource": _secret_ref(cfg.gateway_secret_id)}]


def _db_env(cfg: Config) -> list[dict]:
    return [
        {"name": "DB_USER", "value": cfg.database.user},
        {"name": "DB_NAME", "value": cfg.database.database},
        {"name": "INSTANCE_CONNECTION_NAME", "value": cfg.instance_connection_name},
        {"name": "DB_PASSWORD", "valueSource": _secret_ref(cfg.secret_id)},
        {"name": "ARTIFACT_ROOT", "value": cfg.artifact_root},
        {"name": "ARTIFACT_MODE", "value": cfg.artifacts.mode},
        # The account that signs multipart upload URLs through signBlob (server/artifacts_gcs.py).
        {"name": "MLFLOW_GCP_SIGNER_EMAIL", "value": cfg.server_service_account_email},
        {"name": "LOG_FORMAT", "value": "json"},
    ]


def _cloudsql_volume(cfg: Config) -> list[dict]:
    return [{"name": CLOUDSQL_VOLUME, "cloudSqlInstance": {"instances": [cfg.instance_connection_name]}}]


def _mounts() -> list[dict]:
    return [{"name": CLOUDSQL_VOLUME, "mountPath": CLOUDSQL_MOUNT}]


def _permissions_env(cfg: Config) -> list[dict]:
    """MLflow permissions (server/permissions.py): the service checks them, the job migrates
    their store (its own database in the same instance)."""
    if not cfg.access.permissions:
        return []
    return [
        {"name": permissions.PERMISSIONS_ENV, "value": "1"},
        {"name": permissions.ADMINS_ENV, "value": ",".join(cfg.access.admin_emails)},
        {"name": permissions.DEFAULT_PERMISSION_ENV, "value": cfg.access.default_permission},
    ]


def identity_audiences(hosts: list[str]) -> list[str]:
    """The ID token audiences the server accepts: its URLs, and gcloud's client id (a user's
    `gcloud auth print-identity-token` cannot name another; Cloud Run accepts it too)."""
    return [f"https://{h}" for h in hosts if "*" not in h] + [identity.GCLOUD_CLIENT_ID]


def _identity_env(cfg: Config, hosts: list[str]) -> list[dict]:
    if not cfg.access.identities_verified:
        return []
    return [{"name": identity.AUDIENCES_ENV, "value": ",".join(identity_audiences(hosts))}]


def service(cfg: Config, image: str, hosts: list[str]) -> dict:
    s = cfg.service
    env = _db_env(cfg) + _identity_env(cfg, hosts) + _permissions_env(cfg) + [
        {"name": "ALLOWED_HOSTS", "value": ",".join(hosts)},
        {"name": "WORKERS", "value": str(s.workers)},
        {"name": "DB_CONNECTIONS", "value": str(cfg.connections_per_instance())},
        # The job migrates; instances racing to migrate the schema is what this prevents.
        {"name": "DB_MIGRATE", "value": "never"},
        *_gateway_env(cfg),
    ]
    template: dict = {
        "serviceAccount": cfg.server_service_account_email,
        "scaling": {"minInstanceCount": s.min_instances, "maxInstanceCount": s.max_instances},
        "maxInstanceRequestConcurrency": s.concurrency,
        "timeout": f"{s.timeout_seconds}s",
        "volumes": _cloudsql_volume(cfg),
        "containers": [
            {
                "name": CONTAINER_NAME,
                "image": image,
                "ports": [{"containerPort": s.port}],
                "resources": {"limits": {"cpu": s.cpu, "memory": s.memory}, "startupCpuBoost": True},
                "env": env,
                "volumeMounts": _mounts(),
                "startupProbe": {
                    "httpGet": {"path": "/health", "port": s.port},
                    "periodSeconds": PROBE_PERIOD_SECONDS,
                    "failureThreshold": PROBE_FAILURES,
                },
            }
        ],
    }
    if cfg.database.private_ip:
        template["vpcAccess"] = _vpc_access(cfg)
    # Public means Cloud Run's invoker check off, which Google recommends over an allUsers binding
    # and which domain-restricted sharing (on by default in new organizations) allows; false is
    # sent too, so switching back to private turns the check on again.
    return {"labels": cfg.all_labels, "ingress": "INGRESS_TRAFFIC_ALL",
            "invokerIamDisabled": cfg.access.mode == "public", "template": template}


def _vpc_access(cfg: Config) -> dict:
    # Direct VPC egress into the database's network; only private ranges go through it.
    return {"networkInterfaces": [{"network": cfg.database.network}], "egress": "PRIVATE_RANGES_ONLY"}


def job(cfg: Config, image: str) -> dict:
    env = _db_env(cfg) + _permissions_env(cfg) + [
        {"name": "WORKERS", "value": "1"},
        {"name": "DB_CONNECTIONS", "value": str(JOB_DB_CONNECTIONS)},
    ]
    return {
        "labels": cfg.all_labels,
        "template": {
            "taskCount": 1,
            "template": {
                "serviceAccount": cfg.server_service_account_email,
                # A failed migration must be looked at, not retried blindly.
                "maxRetries": 0,
                "timeout": "1800s",
                **({"vpcAccess": _vpc_access(cfg)} if cfg.database.private_ip else {}),
                "volumes": _cloudsql_volume(cfg),
                "containers": [
                    {
                        "name": "migrate",
                        "image": image,
                        "command": ["python", "-m", "mlflow_gcp.server"],
                        "args": ["migrate"],
                        "resources": {"limits": {"cpu": "1", "memory": cfg.service.memory}},
                        "env": env,
                        "volumeMounts": _mounts(),
                    }
                ],
            },
        },
    }


def build(cfg: Config, source_bucket: str, source_object: str) -> dict:
    return {
        "source": {"storageSource": {"bucket": source_bucket, "object": source_object}},
        "steps": [
            {
                "name": "gcr.io/cloud-builders/docker",
                "args": ["build", "--build-arg", f"MLFLOW_VERSION={cfg.service.mlflow_version}",
                         "-t", cfg.image_uri, "."],
            }
        ],
        "images": [cfg.image_uri],
        "tags": ["mlflow-gcp"],
        "timeout": "1800s",
        # Our own least-privilege builder, not the project's default build account (since 2024 the
        # Compute Engine default one, often without the roles a build needs). With a user-specified
        # account Cloud Build refuses the default logs bucket: logs go to Cloud Logging only.
        "serviceAccount": f"projects/{cfg.project}/serviceAccounts/{cfg.builder_service_account_email}",
        "options": {"logging": "CLOUD_LOGGING_ONLY"},
    }


# IAM bindings (role, member) of the server account, by where they live.
def sa_member(cfg: Config) -> str:
    return f"serviceAccount:{cfg.server_service_account_email}"


def project_bindings(cfg: Config) -> list[tuple[str, str]]:
    return [("roles/cloudsql.client", sa_member(cfg))]


def bucket_bindings(cfg: Config) -> list[tuple[str, str]]:
    return [("roles/storage.objectUser", sa_member(cfg))]


def builder_member(cfg: Config) -> str:
    return f"serviceAccount:{cfg.builder_service_account_email}"


def builds_image(cfg: Config) -> bool:
    """Whether `up` builds the image, and so needs the builder account: no service.image."""
    return not cfg.service.image


# The builder's least roles: write its build logs, read the uploaded source, push to our repository.
def builder_project_bindings(cfg: Config) -> list[tuple[str, str]]:
    return [("roles/logging.logWriter", builder_member(cfg))]


def builder_bucket_bindings(cfg: Config) -> list[tuple[str, str]]:
    return [("roles/storage.objectViewer", builder_member(cfg))]


def repository_bindings(cfg: Config) -> list[tuple[str, str]]:
    return [("roles/artifactregistry.writer", builder_member(cfg))]


def project_iam(cfg: Config) -> list[tuple[str, str]]:
    """Every binding `up` keeps on the project: the server's, and the builder's when it builds."""
    return project_bindings(cfg) + (builder_project_bindings(cfg) if builds_image(cfg) else [])


def bucket_iam(cfg: Config) -> list[tuple[str, str]]:
    return bucket_bindings(cfg) + (builder_bucket_bindings(cfg) if builds_image(cfg) else [])


def repository_iam(cfg: Config) -> list[tuple[str, str]]:
    return repository_bindings(cfg) if builds_image(cfg) else []


def secret_bindings(cfg: Config) -> list[tuple[str, str]]:
    return [("roles/secretmanager.secretAccessor", sa_member(cfg))]


def gateway_secret_bindings(cfg: Config) -> list[tuple[str, str]]:
    return secret_bindings(cfg) if cfg.service.gateway else []


def sa_self_bindings(cfg: Config) -> list[tuple[str, str]]:
    # signBlob as itself: signed URLs for multipart artifact uploads without a key file.
    return [("roles/iam.serviceAccountTokenCreator", sa_member(cfg))]


PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")


def invoker_bindings(cfg: Config) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(bindings to have, bindings to remove) on the service. Public members are never bound: a
    public server has its invoker check off (`service` above), and an allUsers binding left by an
    earlier version goes, public or not."""
    role = "roles/run.invoker"
    return [(role, m) for m in cfg.access.members], [(role, m) for m in PUBLIC_MEMBERS]
