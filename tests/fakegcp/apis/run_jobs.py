"""Cloud Run Admin v2 jobs: create/get/list/patch/delete, run -> executions that succeed, or
fail when fail_next_operation("run") was called. Mixed into the Run module (apis/run.py)."""

from __future__ import annotations

import copy

from ..core.api import Request, handles, new_id, now, project_number
from ..core.errors import GcpError, already_exists, invalid_argument
from .run_common import _ID, JOB_INPUT, _ready, _suffix


class RunJobs:

    def _job(self, name: str) -> dict:
        job = self.jobs.get(name)
        if job is None:
            raise GcpError(404, f"Resource '{name.rsplit('/', 1)[-1]}' of kind 'JOB' in region "
                           f"'{name.split('/')[3]}' in project '{name.split('/')[1]}' does not "
                           "exist.", "NOT_FOUND")
        return job

    def _job_template(self, project: str, job: dict) -> None:
        tpl = job.setdefault("template", {})
        tpl.setdefault("taskCount", 1)
        tpl.setdefault("parallelism", 0)
        task = tpl.setdefault("template", {})
        self._check_containers(task, "template.template", service=False)
        self._check_account(project, task.get("serviceAccount"))
        task.setdefault("maxRetries", 3)
        task.setdefault("timeout", "600s")
        task.setdefault("serviceAccount", f"{project_number(project)}-compute@developer.gserviceaccount.com")
        for c in task.get("containers") or []:
            self._container_defaults(c, service=False)

    def _job_ready(self, job: dict):
        def done(op):
            job["reconciling"] = False
            job["observedGeneration"] = job["generation"]
            job["terminalCondition"] = _ready() if op.error is None else {
                "type": "Ready", "state": "CONDITION_FAILED", "message": op.error.message}
            job["conditions"] = []
            return copy.deepcopy(job)
        return done

    @handles("run.projects.locations.jobs.create")
    def create_job(self, req: Request) -> dict:
        parent = req.get("parent")
        project, _ = self._split(parent)
        jid = req.get("jobId") or ""
        if not _ID.fullmatch(jid):
            raise invalid_argument("job_id must be lowercase letters, digits or hyphens, "
                                   "starting with a letter.", field="job_id")
        name = f"{parent}/jobs/{jid}"
        if name in self.jobs:
            raise already_exists(f"Resource '{jid}'")
        body = copy.deepcopy(req.body or {})
        job = {k: body[k] for k in JOB_INPUT if k in body}
        job.update({"name": name, "uid": new_id(), "generation": "1", "createTime": now(),
                    "updateTime": now(), "creator": "fake-user@example.com",
                    "lastModifier": "fake-user@example.com", "launchStage": body.get("launchStage", "GA"),
                    "etag": new_id(), "reconciling": True, "executionCount": 0})
        self._job_template(project, job)
        self.jobs[name] = job
        return self._lro(name, job, "Job", self._job_ready(job))

    @handles("run.projects.locations.jobs.get")
    def get_job(self, req: Request) -> dict:
        return copy.deepcopy(self._job(req.get("name")))

    @handles("run.projects.locations.jobs.list")
    def list_jobs(self, req: Request) -> dict:
        prefix = req.get("parent") + "/jobs/"
        items = [copy.deepcopy(j) for n, j in sorted(self.jobs.items()) if n.startswith(prefix)]
        return {"jobs": items} if items else {}

    @handles("run.projects.locations.jobs.patch")
    def patch_job(self, req: Request) -> dict:
        name = req.get("name")
        project, _ = self._split(name)
        if name not in self.jobs and req.get("allowMissing") in (True, "true"):
            req.params["parent"] = name.rsplit("/jobs/", 1)[0]
            req.params["jobId"] = name.rsplit("/", 1)[-1]
            return self.create_job(req)
        job = self._job(name)
        body = copy.deepcopy(req.body or {})
        new = copy.deepcopy(job)
        for k in JOB_INPUT:
            new.pop(k, None)
        new.update({k: body[k] for k in JOB_INPUT if k in body})
        self._job_template(project, new)
        new["generation"] = str(int(job["generation"]) + 1)
        new["updateTime"] = now()
        new["etag"] = new_id()
        new["reconciling"] = True
        self.jobs[name] = new
        return self._lro(name, new, "Job", self._job_ready(new))

    @handles("run.projects.locations.jobs.delete")
    def delete_job(self, req: Request) -> dict:
        name = req.get("name")
        job = self._job(name)
        del self.jobs[name]
        for e in [e for e in self.executions if e.startswith(name + "/executions/")]:
            del self.executions[e]
        self.iam.delete(name)
        snapshot = copy.deepcopy(job)
        return self._lro(name, snapshot, "Job", lambda op: snapshot)

    @handles("run.projects.locations.jobs.run")
    def run_job(self, req: Request) -> dict:
        name = req.get("name")
        job = self._job(name)
        if job.get("reconciling"):
            raise GcpError(400, f"Job {name.rsplit('/', 1)[-1]} is not ready: it is still being "
                           "created or updated.", "FAILED_PRECONDITION")
        job["executionCount"] = int(job.get("executionCount", 0)) + 1
        jid = name.rsplit("/", 1)[-1]
        eid = f"{jid}-{_suffix(job['name'], str(job['executionCount']), n=5)}"
        ename = f"{name}/executions/{eid}"
        overrides = (req.body or {}).get("overrides") or {}
        template = copy.deepcopy(job["template"])
        task_count = overrides.get("taskCount") or template.get("taskCount", 1)
        execution = {
            "name": ename, "uid": new_id(), "generation": "1", "createTime": now(),
            "startTime": now(), "updateTime": now(), "job": jid, "launchStage": "GA",
            "taskCount": task_count, "parallelism": template.get("parallelism", 0),
            "template": template.get("template", {}), "reconciling": True, "runningCount": task_count,
            "conditions": [{"type": "Completed", "state": "CONDITION_PENDING"}],
            "etag": new_id(), "logUri": f"https://console.cloud.google.com/logs/viewer?execution={eid}",
        }
        if overrides:
            execution["annotations"] = {"run.googleapis.com/overrides": "true"}
            execution["overrides"] = overrides  # kept out of the public JSON below
        self.executions[ename] = execution
        job["latestCreatedExecution"] = {"name": ename, "createTime": execution["createTime"]}

        def done(op):
            problem = self.secret_problem(name.split("/")[1], execution["template"])
            if op.error is None and problem:
                op.error = GcpError(400, f"Task {eid}-0 failed to start: {problem}", "FAILED_PRECONDITION")
            if op.error is None:
                exited, output = self._container_run(name.split("/")[1], jid, execution["template"], overrides)
                for text in filter(None, [output, exited]):
                    self._task_log(name.split("/")[1], jid, eid, text, "ERROR" if text is exited else "INFO")
                if exited:
                    op.error = GcpError(400, f"Task {eid}-task0 failed with message: The container "
                                        "exited with an error.", "FAILED_PRECONDITION")
            execution["reconciling"] = False
            execution["runningCount"] = 0
            execution["completionTime"] = now()
            if op.error is None:
                execution["succeededCount"] = task_count
                execution["conditions"] = [
                    {"type": "Completed", "state": "CONDITION_SUCCEEDED", "lastTransitionTime": now()},
                    {"type": "ResourcesAvailable", "state": "CONDITION_SUCCEEDED"},
                    {"type": "Started", "state": "CONDITION_SUCCEEDED"}]
                status = "EXECUTION_SUCCEEDED"
            else:
                execution["failedCount"] = task_count
                execution["conditions"] = [
                    {"type": "Completed", "state": "CONDITION_FAILED", "message": op.error.message,
                     "lastTransitionTime": now()}]
                status = "EXECUTION_FAILED"
            job["latestCreatedExecution"].update(completionTime=execution["completionTime"],
                                                 completionStatus=status)
            return self._execution(execution)

        op = self._lro(name, self._execution(execution), "Execution", done)
        execution["_op"] = op["name"]  # reading the execution advances it (time passes for its reader)
        return op

    @staticmethod
    def _task_env(project: str, template: dict) -> dict[str, str]:
        """The first container's environment, secrets resolved, as the task would see it."""
        containers = template.get("containers") or [{}]
        out = {}
        for env in containers[0].get("env") or []:
            ref = (env.get("valueSource") or {}).get("secretKeyRef")
            out[env["name"]] = env.get("value", "") if ref is None else None
        return {k: v for k, v in out.items() if v is not None}

    def _container_run(self, project: str, jid: str, template: dict, overrides: dict) -> tuple[str | None, str]:
        """(what the task's container printed when it failed, or None when it exited 0; its
        other output).

        The container itself is not run here. With `job_runner` set, the test runs it; otherwise
        a migration (args `migrate`) fails as PostgreSQL makes it fail when the job's DB_USER does
        not own the existing MLflow tables, and a successful one leaves them owned by DB_USER."""
        env = self._task_env(project, template)
        containers = template.get("containers") or [{}]
        args = containers[0].get("args") or []
        for override in overrides.get("containerOverrides") or []:
            if override.get("clearArgs"):
                args = []
            args = override.get("args") or args
        if self.job_runner is not None:
            secrets = self.fake.modules["secretmanager"]
            for e in containers[0].get("env") or []:
                ref = (e.get("valueSource") or {}).get("secretKeyRef")
                if ref:
                    env[e["name"]] = secrets.payload_of(project, ref["secret"]).decode()
            return self.job_runner(project, jid, env, args)
        if args != ["migrate"]:
            return None, ""
        connection = (env.get("INSTANCE_CONNECTION_NAME") or "").split(":")
        if len(connection) != 3 or not env.get("DB_USER") or not env.get("DB_NAME"):
            return None
        sql = self.fake.modules["sqladmin"]
        owner = sql.table_owner(connection[0], connection[2], env["DB_NAME"])
        if owner is not None and owner != env["DB_USER"]:
            return ("sqlalchemy.exc.ProgrammingError: (psycopg2.errors.InsufficientPrivilege) "
                    "permission denied for table alembic_version"), ""
        sql.set_table_owner(connection[0], connection[2], env["DB_NAME"], env["DB_USER"])
        return None, ""

    def _task_log(self, project: str, jid: str, eid: str, text: str, severity: str) -> None:
        stream = "stderr" if severity == "ERROR" else "stdout"
        for line in text.splitlines():
            self.fake.modules["logging"].add_entry(
                project, line, severity=severity,
                resource={"type": "cloud_run_job", "labels": {"job_name": jid, "project_id": project}},
                logName=f"projects/{project}/logs/run.googleapis.com%2F{stream}",
                labels={"run.googleapis.com/execution_name": eid})

    @staticmethod
    def _execution(execution: dict) -> dict:
        return {k: copy.deepcopy(v) for k, v in execution.items() if k not in ("overrides", "_op")}

    def execution_overrides(self, name: str) -> dict:
        """For tests: the overrides a run was started with."""
        return self.executions[name].get("overrides", {})

    @handles("run.projects.locations.jobs.executions.get")
    def get_execution(self, req: Request) -> dict:
        execution = self.executions.get(req.get("name"))
        if execution is None:
            raise GcpError(404, f"Execution {req.get('name')} does not exist.", "NOT_FOUND")
        op = self.ops.get(execution.get("_op"))
        if op is not None:
            op.poll()
        return self._execution(execution)

    @handles("run.projects.locations.jobs.executions.list")
    def list_executions(self, req: Request) -> dict:
        prefix = req.get("parent") + "/executions/"
        items = [self._execution(e) for n, e in self.executions.items() if n.startswith(prefix)]
        items.reverse()
        return {"executions": items} if items else {}
