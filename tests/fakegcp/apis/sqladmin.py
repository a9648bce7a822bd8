"""Cloud SQL Admin (v1, and v1beta4 which gcloud uses): instances, databases, users, backup runs,
restore, operations.

Faithful where the deploy depends on it: creation is PENDING_CREATE until its operation is done;
a mutating call on an instance while one of its operations runs is refused with 409
operationInProgress; delete is refused while deletion protection is on; the root/user passwords
are accepted and never returned. Reading the instance (instances.get) also advances its pending
operation, as time passes for a client that polls the instance instead of the operation.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re

from ..core.api import ApiModule, Operation, Request, deep_merge, handles, new_id, now, project_number
from ..core.errors import GcpError
from .sqladmin_data import _BASE, SqlData, _err

_NAME = re.compile(r"[a-z]([-a-z0-9]{0,96}[a-z0-9])?")


def instance_missing() -> GcpError:
    return _err(404, "The Cloud SQL instance does not exist.", "instanceDoesNotExist")


_TIER = re.compile(r"db-(f1-micro|g1-small|custom-\d+-\d+|n1-(standard|highmem)-\d+|"
                   r"perf-optimized-N-\d+|(standard|highmem|lightweight)-\d+)")


# Transaction log days each edition keeps (Cloud SQL: 1-7, PostgreSQL Enterprise Plus 1-35).
_LOG_DAYS = {"ENTERPRISE": 7, "ENTERPRISE_PLUS": 35}


def _validate_settings(version: str, s: dict, given: dict | None = None) -> None:
    """What Cloud SQL refuses in settings the deploy sets (checked on insert and after patch);
    `given` is what the request itself set (the retention rule is checked when it sets either)."""
    if not _TIER.fullmatch(s.get("tier") or ""):
        raise _err(400, f"Invalid request: Invalid Tier ({s.get('tier')}) for (SECOND_GEN) "
                   "Edition. Use sql tiers list to see the list of valid tiers.", "invalid")
    edition = s.get("edition") or "ENTERPRISE"
    # Enterprise Plus has only its perf-optimized machines, which Enterprise lacks.
    if (edition == "ENTERPRISE_PLUS") != s["tier"].startswith("db-perf-optimized-"):
        raise _err(400, f"Invalid request: Invalid Tier ({s['tier']}) for ({edition}) Edition. Use "
                   "sql tiers list to see the list of valid tiers.", "invalid")
    backup = s.get("backupConfiguration") or {}
    start = backup.get("startTime")
    if start and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", start):
        raise _err(400, f"Invalid request: backup start time {start!r} must be HH:MM.", "invalid")
    if backup.get("pointInTimeRecoveryEnabled") and not backup.get("enabled"):
        raise _err(400, "Invalid request: point-in-time recovery requires automated backups "
                   "to be enabled.", "invalid")
    if backup.get("binaryLogEnabled") and not version.startswith("MYSQL"):
        raise _err(400, "Invalid request: binary logging is only supported for MySQL; use "
                   "pointInTimeRecoveryEnabled.", "invalid")
    days = backup.get("transactionLogRetentionDays")
    top = _LOG_DAYS.get(edition, 7) if version.startswith("POSTGRES") else 7
    if days is not None and not 1 <= int(days) <= top:
        raise _err(400, "Invalid request: The number of transaction log retention days must be "
                   f"between 1 and {top}.", "invalid")
    kept = (backup.get("backupRetentionSettings") or {}).get("retainedBackups")
    if kept is not None and not 1 <= int(kept) <= 365:
        raise _err(400, "Invalid request: The number of retained backups must be between 1 and 365.",
                   "invalid")
    asked = (given or {}).get("backupConfiguration") or {}
    if (backup.get("pointInTimeRecoveryEnabled") and days is not None and kept is not None
            and ("transactionLogRetentionDays" in asked or "backupRetentionSettings" in asked)
            and int(kept) <= int(days)):
        raise _err(400, "Invalid request: backup retention should be > transaction log retention.",
                   "invalid")
    window = s.get("maintenanceWindow") or {}
    if not 0 <= int(window.get("hour", 0)) <= 23 or not 0 <= int(window.get("day", 0)) <= 7:
        raise _err(400, "Invalid request: maintenance window day must be 1-7 and hour 0-23.", "invalid")
    if s.get("activationPolicy") not in (None, "ALWAYS", "NEVER"):
        raise _err(400, f"Invalid request: activation policy {s['activationPolicy']} is not "
                   "supported for second generation instances.", "invalid")


def _default_settings(tier: str) -> dict:
    return {
        "kind": "sql#settings",
        "tier": tier,
        "settingsVersion": "1",
        "activationPolicy": "ALWAYS",
        "availabilityType": "ZONAL",
        "pricingPlan": "PER_USE",
        "replicationType": "SYNCHRONOUS",
        "dataDiskSizeGb": "10",
        "dataDiskType": "PD_SSD",
        "storageAutoResize": True,
        "storageAutoResizeLimit": "0",
        "edition": "ENTERPRISE",
        "connectorEnforcement": "NOT_REQUIRED",
        "deletionProtectionEnabled": False,
        "ipConfiguration": {"ipv4Enabled": True, "requireSsl": False,
                            "sslMode": "ALLOW_UNENCRYPTED_AND_ENCRYPTED"},
        "backupConfiguration": {
            "kind": "sql#backupConfiguration", "enabled": False, "startTime": "00:00",
            "pointInTimeRecoveryEnabled": False, "transactionLogRetentionDays": 7,
            "backupRetentionSettings": {"retentionUnit": "COUNT", "retainedBackups": 7},
            "backupTier": "STANDARD",
        },
        "locationPreference": {"kind": "sql#locationPreference"},
        "maintenanceWindow": {"kind": "sql#maintenanceWindow", "hour": 0, "day": 0},
    }


class SqlAdmin(SqlData, ApiModule):
    name = "sqladmin"
    versions = ("v1", "v1beta4")
    service = "sqladmin.googleapis.com"
    title = "Cloud SQL Admin API"

    def reset(self) -> None:
        self.state: dict[str, dict] = {}  # "project/instance" -> DatabaseInstance
        self.databases: dict[str, dict] = {}  # "project/instance/db" -> Database
        self.users: dict[str, dict] = {}  # "project/instance/name@host" -> User (with password)
        self.backups: dict[str, dict] = {}  # "project/instance/id" -> BackupRun
        self.ops: dict[str, Operation] = {}  # op name -> Operation
        self.op_json: dict[str, dict] = {}  # op name -> sql#operation fields
        self.busy: dict[str, str] = {}  # "project/instance" -> pending op name
        self.project_backups: dict[str, dict] = {}  # "projects/p/backups/id" -> Backup (Backups API)
        # Names of deleted instances: Cloud SQL keeps them reserved for about a week.
        self.deleted_names: set[str] = set()
        self.reserve_deleted_names = True
        self._backup_ids = itertools.count(1700000000000)
        self.restores: list[tuple[str, str]] = []  # (instance, backup id) of every restore started
        # "project/instance/db" -> the database user that owns MLflow's tables in it: PostgreSQL
        # lets only the owner alter them (Cloud SQL users are not superusers). Set by a
        # successful migration job, or by a test seeding a deployment (set_table_owner).
        self.table_owners: dict[str, str] = {}

    def snapshot(self) -> dict:
        def masked(user):
            return {**user, "password": "<set>"} if user.get("password") is not None else user
        return {"instances": self.state, "databases": self.databases,
                "users": {k: masked(u) for k, u in self.users.items()},
                "backups": [b.get("type") + ":" + b.get("status") for b in self.backups.values()],
                "project_backups": sorted(f"{b['instance']}:{b['type']}" for b in self.project_backups.values())}

    # -- helpers ----------------------------------------------------------------------------

    def instance(self, project: str, name: str) -> dict:
        inst = self.state.get(f"{project}/{name}")
        if inst is None:
            raise instance_missing()
        return inst

    def _settle(self, key: str) -> None:
        name = self.busy.get(key)
        if name is not None:
            self.ops[name].poll()

    def _check_idle(self, key: str) -> None:
        name = self.busy.get(key)
        if name is not None:
            self.ops[name].refresh()
        if name is not None and not self.ops[name].done:
            raise _err(409, "Operation failed because another operation was already in progress. "
                       "Try your request after the current operation is complete.",
                       "operationInProgress")

    def _operation(self, req: Request, instance: str, op_type: str, on_done=None, **extra) -> dict:
        project = req.get("project")
        key = f"{project}/{instance}"
        self._check_idle(key)
        name = new_id()

        def done(op):
            try:
                return on_done(op) if on_done else None
            finally:
                if self.busy.get(key) == name:
                    del self.busy[key]

        fields = {
            "kind": "sql#operation",
            "name": name,
            "operationType": op_type,
            "targetId": instance,
            "targetProject": project,
            "targetLink": f"{_BASE}/projects/{project}/instances/{instance}",
            "selfLink": f"{_BASE}/projects/{project}/operations/{name}",
            "insertTime": now(),
            "user": "fake-user@example.com",
            **extra,
        }
        self.op_json[name] = fields
        self.busy[key] = name
        op = self.new_operation(name, done, target=f"projects/{project}/instances/{instance} {op_type}")
        self.ops[name] = op
        return self._render(op)

    def _render(self, op: Operation) -> dict:
        out = dict(self.op_json[op.name])
        out["startTime"] = op.created
        if op.done:
            out["status"] = "DONE"
            out["endTime"] = op.ended
            if op.error is not None:
                out["error"] = {"kind": "sql#operationErrors", "errors": [
                    {"kind": "sql#operationError", "code": op.error.status,
                     "message": op.error.message}]}
        else:
            out["status"] = "PENDING" if op.polls_left >= self.fake.op_polls else "RUNNING"
        return out

    @staticmethod
    def _public(inst: dict) -> dict:
        out = copy.deepcopy(inst)
        out.pop("rootPassword", None)
        return out

    # -- instances --------------------------------------------------------------------------

    @handles("sql.instances.insert")
    def insert(self, req: Request) -> dict:
        project = req.get("project")
        body = copy.deepcopy(req.body or {})
        name = body.get("name") or ""
        if not _NAME.fullmatch(name):
            raise _err(400, "Invalid request: instance name must be lowercase letters, digits "
                       "and hyphens, starting with a letter.", "invalid")
        if f"{project}/{name}" in self.state:
            raise _err(409, "The Cloud SQL instance already exists.", "instanceAlreadyExists")
        if self.reserve_deleted_names and f"{project}/{name}" in self.deleted_names:
            raise _err(409, "The Cloud SQL instance already exists. When you delete an instance, "
                       "you can't reuse the name of the deleted instance until one week from "
                       "the deletion date.", "instanceAlreadyExists")
        settings = body.get("settings") or {}
        if not settings.get("tier"):
            raise _err(400, "Invalid request: Invalid Tier ().", "invalid")
        version = body.get("databaseVersion") or "MYSQL_8_0"
        region = body.get("region") or "us-central1"
        merged = deep_merge(_default_settings(settings["tier"]), settings)
        _validate_settings(version, merged, settings)
        number = project_number(project)
        inst = {
            "kind": "sql#instance",
            "name": name,
            "project": project,
            "region": region,
            "databaseVersion": version,
            "databaseInstalledVersion": version,
            "backendType": "SECOND_GEN",
            "instanceType": "CLOUD_SQL_INSTANCE",
            "state": "PENDING_CREATE",
            "connectionName": f"{project}:{region}:{name}",
            "gceZone": f"{region}-a",
            "settings": merged,
            "createTime": now(),
            "selfLink": f"{_BASE}/projects/{project}/instances/{name}",
            "serviceAccountEmailAddress": f"p{number}-abcdef@gcp-sa-cloud-sql.iam.gserviceaccount.com",
            "serverCaCert": {"kind": "sql#sslCert", "instance": name, "commonName": "C=US,O=Google\\, Inc,CN=Google Cloud SQL Server CA",
                             "sha1Fingerprint": hashlib.sha1(name.encode()).hexdigest()},
            "sqlNetworkArchitecture": "NEW_NETWORK_ARCHITECTURE",
            "etag": new_id(),
        }
        for extra in ("userLabels", "diskEncryptionConfiguration"):
            if extra in body:
                inst[extra] = body[extra]
        self._addresses(inst)
        key = f"{project}/{name}"
        self.state[key] = inst

        def done(op):
            inst["state"] = "FAILED" if op.error else "RUNNABLE"
            if not op.error and version.startswith("POSTGRES"):
                # Cloud SQL creates the default "postgres" database and user with the instance.
                self.databases[f"{key}/postgres"] = self._database(project, name, "postgres")
                self.users.setdefault(f"{key}/postgres@", self._user(project, name, {"name": "postgres"}))

        return self._operation(req, name, "CREATE", done)

    def _addresses(self, inst: dict) -> None:
        ipc = inst["settings"].get("ipConfiguration") or {}
        digest = int(hashlib.sha256(inst["name"].encode()).hexdigest(), 16)
        addrs = []
        if ipc.get("ipv4Enabled", True):
            addrs.append({"type": "PRIMARY", "ipAddress": f"34.{digest % 250}.{digest // 250 % 250}.{digest // 62500 % 250}"})
        if ipc.get("privateNetwork"):
            addrs.append({"type": "PRIVATE", "ipAddress": f"10.{digest % 250}.0.3"})
        inst["ipAddresses"] = addrs

    @handles("sql.instances.get")
    def get(self, req: Request) -> dict:
        key = f"{req.get('project')}/{req.get('instance')}"
        self._settle(key)
        return self._public(self.instance(req.get("project"), req.get("instance")))

    @handles("sql.instances.list")
    def list(self, req: Request) -> dict:
        project = req.get("project")
        items = [self._public(i) for k, i in sorted(self.state.items()) if i["project"] == project]
        out = {"kind": "sql#instancesList"}
        if items:
            out["items"] = items
        return out

    @handles("sql.instances.patch", "sql.instances.update")
    def patch(self, req: Request) -> dict:
        project, name = req.get("project"), req.get("instance")
        inst = self.instance(project, name)
        body = copy.deepcopy(req.body or {})
        for immutable in ("name", "region", "project"):
            if immutable in body and body[immutable] != inst[immutable]:
                raise _err(400, f"Invalid request: {immutable} cannot be changed.", "invalid")
        self._check_idle(f"{project}/{name}")
        settings = body.pop("settings", None) or {}
        settings.pop("settingsVersion", None)
        if req.method_id.endswith(".update"):
            new_settings = deep_merge(_default_settings(settings.get("tier") or inst["settings"]["tier"]), settings)
        else:
            new_settings = deep_merge(copy.deepcopy(inst["settings"]), settings)
        _validate_settings(body.get("databaseVersion") or inst["databaseVersion"], new_settings, settings)
        new_settings["settingsVersion"] = str(int(inst["settings"]["settingsVersion"]) + 1)
        inst["settings"] = new_settings
        for field in ("databaseVersion", "userLabels"):
            if field in body:
                inst[field] = body[field]
        inst["etag"] = new_id()
        self._addresses(inst)
        return self._operation(req, name, "UPDATE")

    @handles("sql.instances.delete")
    def delete(self, req: Request) -> dict:
        project, name = req.get("project"), req.get("instance")
        inst = self.instance(project, name)
        if inst["settings"].get("deletionProtectionEnabled"):
            raise _err(400, "The instance is protected. Please disable the deletion protection "
                       "and try again. To disable deletion protection, update the instance "
                       "settings with deletionProtectionEnabled set to false.", "instanceProtected")
        key = f"{project}/{name}"
        self._check_idle(key)
        inst["state"] = "PENDING_DELETE"
        final = inst["settings"].get("finalBackupConfig") or {}
        want_final = req.get("enableFinalBackup")
        want_final = final.get("enabled", False) if want_final is None else want_final in (True, "true")

        def done(op):
            if op.error:
                inst["state"] = "RUNNABLE"
                return
            if want_final:
                days = req.get("finalBackupTtlDays") or final.get("retentionDays") or 30
                self._new_backup(project, inst, "FINAL", req.get("finalBackupDescription"),
                                 ttl_days=str(days), expiry=req.get("finalBackupExpiryTime"))
            self.state.pop(key, None)
            self.deleted_names.add(key)
            for table in (self.databases, self.users, self.backups, self.table_owners):
                for k in [k for k in table if k.startswith(key + "/")]:
                    del table[k]

        return self._operation(req, name, "DELETE", done)

    @handles("sql.instances.restoreBackup")
    def restore_backup(self, req: Request) -> dict:
        project, name = req.get("project"), req.get("instance")
        self.instance(project, name)
        ctx = (req.body or {}).get("restoreBackupContext") or {}
        source = ctx.get("instanceId") or name
        source_project = ctx.get("project") or project
        backup_key = f"{source_project}/{source}/{ctx.get('backupRunId')}"
        if backup_key not in self.backups:
            raise _err(404, "The backup run does not exist.", "backupRunDoesNotExist")
        self._runnable(project, name)
        self.restores.append((name, ctx.get("backupRunId")))
        return self._operation(req, name, "RESTORE_VOLUME")

    # -- operations -------------------------------------------------------------------------

    @handles("sql.operations.get")
    def get_operation(self, req: Request) -> dict:
        op = self.ops.get(req.get("operation"))
        if op is None or self.op_json[op.name]["targetProject"] != req.get("project"):
            raise _err(404, f"The Cloud SQL operation {req.get('operation')} does not exist.",
                       "operationDoesNotExist")
        op.poll()
        return self._render(op)

    @handles("sql.operations.list")
    def list_operations(self, req: Request) -> dict:
        project, instance = req.get("project"), req.get("instance")
        items = [self._render(op) for op in reversed(list(self.ops.values()))
                 if self.op_json[op.name]["targetProject"] == project
                 and (not instance or self.op_json[op.name]["targetId"] == instance)]
        return {"kind": "sql#operationsList", "items": items}
