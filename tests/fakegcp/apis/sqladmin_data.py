"""Cloud SQL databases, users, backup runs and the Backups API; mixed into SqlAdmin
(apis/sqladmin.py), whose helpers (instance, _operation, _check_idle...) they use."""

from __future__ import annotations

import copy

from ..core.api import Request, handles, new_id, now
from ..core.errors import GcpError

_BASE = "https://sqladmin.googleapis.com/v1"


def _err(code: int, message: str, reason: str) -> GcpError:
    return GcpError(code, message, None, reason)


class SqlData:
    # -- databases --------------------------------------------------------------------------

    def _database(self, project: str, instance: str, name: str, body: dict | None = None) -> dict:
        body = body or {}
        return {
            "kind": "sql#database", "name": name, "instance": instance, "project": project,
            "charset": body.get("charset") or "UTF8",
            "collation": body.get("collation") or "en_US.UTF8",
            "selfLink": f"{_BASE}/projects/{project}/instances/{instance}/databases/{name}",
            "etag": new_id(),
        }

    def _runnable(self, project: str, instance: str) -> dict:
        inst = self.instance(project, instance)
        # A stopped instance (activationPolicy NEVER) refuses work that needs the database running.
        if inst["state"] != "RUNNABLE" or inst["settings"].get("activationPolicy") == "NEVER":
            raise _err(400, f"Invalid request since instance is not running.", "invalidState")
        return inst

    @handles("sql.databases.insert")
    def insert_database(self, req: Request) -> dict:
        project, instance = req.get("project"), req.get("instance")
        self._runnable(project, instance)
        name = (req.body or {}).get("name")
        if not name:
            raise _err(400, "Invalid request: missing database name.", "invalid")
        key = f"{project}/{instance}/{name}"
        if key in self.databases:
            # Cloud SQL reports this as a failed CREATE_DATABASE on Postgres; the API answers 400.
            raise _err(400, f"Invalid request: failed to create database {name}. Detail: pq: "
                       f"database \"{name}\" already exists.", "invalid")
        self._check_idle(f"{project}/{instance}")
        self.databases[key] = self._database(project, instance, name, req.body)
        return self._operation(req, instance, "CREATE_DATABASE")

    def _db(self, req: Request) -> tuple[str, dict]:
        key = f"{req.get('project')}/{req.get('instance')}/{req.get('database')}"
        self.instance(req.get("project"), req.get("instance"))
        db = self.databases.get(key)
        if db is None:
            raise _err(404, "Not Found", "notFound")
        return key, db

    @handles("sql.databases.get")
    def get_database(self, req: Request) -> dict:
        return dict(self._db(req)[1])

    @handles("sql.databases.list")
    def list_databases(self, req: Request) -> dict:
        prefix = f"{req.get('project')}/{req.get('instance')}/"
        self.instance(req.get("project"), req.get("instance"))
        return {"kind": "sql#databasesList",
                "items": [dict(d) for k, d in sorted(self.databases.items()) if k.startswith(prefix)]}

    @handles("sql.databases.delete")
    def delete_database(self, req: Request) -> dict:
        key, _ = self._db(req)
        self._check_idle(f"{req.get('project')}/{req.get('instance')}")
        del self.databases[key]
        self.table_owners.pop(key, None)
        return self._operation(req, req.get("instance"), "DELETE_DATABASE")

    @handles("sql.databases.patch", "sql.databases.update")
    def patch_database(self, req: Request) -> dict:
        _, db = self._db(req)
        self._check_idle(f"{req.get('project')}/{req.get('instance')}")
        for field in ("charset", "collation"):
            if (req.body or {}).get(field):
                db[field] = req.body[field]
        return self._operation(req, req.get("instance"), "UPDATE_DATABASE")

    # -- users ------------------------------------------------------------------------------

    def _user(self, project: str, instance: str, body: dict) -> dict:
        user = {"kind": "sql#user", "name": body["name"], "host": body.get("host", ""),
                "instance": instance, "project": project, "type": body.get("type") or "BUILT_IN",
                "etag": new_id()}
        if body.get("password") is not None:
            user["password"] = body["password"]
        return user

    def _user_key(self, req: Request, name: str, host: str | None) -> str:
        return f"{req.get('project')}/{req.get('instance')}/{name}@{host or ''}"

    @staticmethod
    def _public_user(user: dict) -> dict:
        out = dict(user)
        out.pop("password", None)
        if not out.get("host"):
            out.pop("host", None)
        return out

    @handles("sql.users.insert")
    def insert_user(self, req: Request) -> dict:
        project, instance = req.get("project"), req.get("instance")
        self._runnable(project, instance)
        body = req.body or {}
        if not body.get("name"):
            raise _err(400, "Invalid request: missing user name.", "invalid")
        key = self._user_key(req, body["name"], body.get("host"))
        if key in self.users:
            raise _err(409, f"User {body['name']} already exists.", "alreadyExists")
        self._check_idle(f"{project}/{instance}")
        self.users[key] = self._user(project, instance, body)
        return self._operation(req, instance, "CREATE_USER")

    @handles("sql.users.list")
    def list_users(self, req: Request) -> dict:
        self.instance(req.get("project"), req.get("instance"))
        prefix = f"{req.get('project')}/{req.get('instance')}/"
        return {"kind": "sql#usersList",
                "items": [self._public_user(u) for k, u in sorted(self.users.items()) if k.startswith(prefix)]}

    @handles("sql.users.get")
    def get_user(self, req: Request) -> dict:
        self.instance(req.get("project"), req.get("instance"))
        user = self.users.get(self._user_key(req, req.get("name"), req.get("host")))
        if user is None:
            raise _err(404, "Not Found", "notFound")
        return self._public_user(user)

    @handles("sql.users.update")
    def update_user(self, req: Request) -> dict:
        project, instance = req.get("project"), req.get("instance")
        self._runnable(project, instance)
        name = req.get("name") or (req.body or {}).get("name")
        user = self.users.get(self._user_key(req, name, req.get("host")))
        if user is None:
            raise _err(404, "Not Found", "notFound")
        self._check_idle(f"{project}/{instance}")
        if (req.body or {}).get("password") is not None:
            user["password"] = req.body["password"]
        user["etag"] = new_id()
        return self._operation(req, instance, "UPDATE_USER")

    @handles("sql.users.delete")
    def delete_user(self, req: Request) -> dict:
        project, instance = req.get("project"), req.get("instance")
        self.instance(project, instance)
        key = self._user_key(req, req.get("name"), req.get("host"))
        if key not in self.users:
            raise _err(404, "Not Found", "notFound")
        self._check_idle(f"{project}/{instance}")
        del self.users[key]
        return self._operation(req, instance, "DELETE_USER")

    def set_table_owner(self, project: str, instance: str, database: str, user: str | None) -> None:
        """For tests: the database holds MLflow tables owned by `user` (None: no tables)."""
        key = f"{project}/{instance}/{database}"
        if user is None:
            self.table_owners.pop(key, None)
        else:
            self.table_owners[key] = user

    def table_owner(self, project: str, instance: str, database: str) -> str | None:
        return self.table_owners.get(f"{project}/{instance}/{database}")

    def password_of(self, project: str, instance: str, user: str, host: str = "") -> str | None:
        """For tests: the password the API was given (the API itself never returns it)."""
        return self.users.get(f"{project}/{instance}/{user}@{host}", {}).get("password")

    # -- Backups API (backups that outlive their instance, e.g. FINAL) ------------------------

    def _new_backup(self, project: str, inst: dict, kind: str, description: str | None,
                    ttl_days: str | None = None, expiry: str | None = None) -> dict:
        backup_id = str(next(self._backup_ids))
        name = f"projects/{project}/backups/{backup_id}"
        backup = {"kind": "sql#backup", "name": name, "instance": inst["name"], "type": kind,
                  "state": "SUCCESSFUL", "databaseVersion": inst["databaseVersion"],
                  "location": inst["region"], "backupKind": "SNAPSHOT",
                  "selfLink": f"{_BASE}/{name}", "instanceSettings": self._public(inst)}
        if description:
            backup["description"] = description
        if kind == "FINAL":
            backup["instanceDeletionTime"] = now()
            if expiry:
                backup["expiryTime"] = expiry
            else:
                backup["ttlDays"] = ttl_days or "30"
        self.project_backups[name] = backup
        return backup

    @handles("sql.Backups.ListBackups", "sql.backups.listBackups")
    def list_project_backups(self, req: Request) -> dict:
        prefix = self._backups_parent(req.get("parent")) + "/backups/"
        items = [copy.deepcopy(b) for n, b in self.project_backups.items() if n.startswith(prefix)]
        items.reverse()
        return {"backups": items} if items else {}

    @staticmethod
    def _backups_parent(parent: str) -> str:
        return "/".join(parent.split("/")[:2])

    def _project_backup(self, name: str) -> dict:
        backup = self.project_backups.get(name)
        if backup is None:
            raise _err(404, "The backup does not exist.", "backupDoesNotExist")
        return backup

    @handles("sql.Backups.GetBackup", "sql.backups.getBackup")
    def get_project_backup(self, req: Request) -> dict:
        return copy.deepcopy(self._project_backup(req.get("name")))

    @handles("sql.Backups.CreateBackup", "sql.backups.createBackup")
    def create_project_backup(self, req: Request) -> dict:
        project = req.get("parent").split("/")[1]
        body = req.body or {}
        inst = self._runnable(project, body.get("instance") or "")
        req.params["project"] = project
        backup = self._new_backup(project, inst, "ON_DEMAND", body.get("description"))
        return self._operation(req, inst["name"], "BACKUP", backupContext={
            "kind": "sql#backupContext", "name": backup["name"]})

    @handles("sql.Backups.DeleteBackup", "sql.backups.deleteBackup")
    def delete_project_backup(self, req: Request) -> dict:
        backup = self._project_backup(req.get("name"))
        del self.project_backups[backup["name"]]
        req.params["project"] = backup["name"].split("/")[1]
        # The instance may be gone (FINAL backups): the operation targets the backup's instance name.
        key = f"{req.params['project']}/{backup['instance']}"
        if key not in self.state:
            self.busy.pop(key, None)
        return self._operation(req, backup["instance"], "DELETE_BACKUP")

    @handles("sql.instances.restart")
    def restart(self, req: Request) -> dict:
        self._runnable(req.get("project"), req.get("instance"))
        return self._operation(req, req.get("instance"), "RESTART")

    # -- backup runs ------------------------------------------------------------------------

    @handles("sql.backupRuns.insert")
    def insert_backup(self, req: Request) -> dict:
        project, instance = req.get("project"), req.get("instance")
        inst = self._runnable(project, instance)
        self._check_idle(f"{project}/{instance}")
        run_id = str(next(self._backup_ids))
        run = {
            "kind": "sql#backupRun", "id": run_id, "instance": instance, "status": "ENQUEUED",
            "type": "ON_DEMAND", "backupKind": "SNAPSHOT", "enqueuedTime": now(),
            "windowStartTime": now(), "location": inst["region"],
            "databaseVersion": inst["databaseVersion"],
            "selfLink": f"{_BASE}/projects/{project}/instances/{instance}/backupRuns/{run_id}",
        }
        if (req.body or {}).get("description"):
            run["description"] = req.body["description"]
        self.backups[f"{project}/{instance}/{run_id}"] = run

        def done(op):
            run["status"] = "FAILED" if op.error else "SUCCESSFUL"
            run["startTime"] = run["endTime"] = now()

        return self._operation(req, instance, "BACKUP_VOLUME", done,
                               backupContext={"kind": "sql#backupContext", "backupId": run_id})

    def add_backup(self, project: str, instance: str, kind: str = "AUTOMATED") -> dict:
        """For tests: an automated backup as Cloud SQL takes them nightly."""
        run_id = str(next(self._backup_ids))
        run = {"kind": "sql#backupRun", "id": run_id, "instance": instance, "status": "SUCCESSFUL",
               "type": kind, "backupKind": "SNAPSHOT", "enqueuedTime": now(), "startTime": now(),
               "endTime": now(), "windowStartTime": now()}
        self.backups[f"{project}/{instance}/{run_id}"] = run
        return run

    @handles("sql.backupRuns.list")
    def list_backups(self, req: Request) -> dict:
        self.instance(req.get("project"), req.get("instance"))
        prefix = f"{req.get('project')}/{req.get('instance')}/"
        items = [dict(b) for k, b in self.backups.items() if k.startswith(prefix)]
        items.sort(key=lambda b: int(b["id"]), reverse=True)
        return {"kind": "sql#backupRunsList", "items": items}

    def _backup(self, req: Request) -> tuple[str, dict]:
        self.instance(req.get("project"), req.get("instance"))
        key = f"{req.get('project')}/{req.get('instance')}/{req.get('id')}"
        if key not in self.backups:
            raise _err(404, "The backup run does not exist.", "backupRunDoesNotExist")
        return key, self.backups[key]

    @handles("sql.backupRuns.get")
    def get_backup(self, req: Request) -> dict:
        return dict(self._backup(req)[1])

    @handles("sql.backupRuns.delete")
    def delete_backup(self, req: Request) -> dict:
        key, _ = self._backup(req)
        self._check_idle(f"{req.get('project')}/{req.get('instance')}")
        del self.backups[key]
        return self._operation(req, req.get("instance"), "DELETE_BACKUP")
