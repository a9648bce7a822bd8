"""`doctor`: the old troubleshooting guide as checks, each PASS, WARN or FAIL with the command
that fixes it. Read-only: doctor never changes anything.

How "schema at head" is checked without a database connection from here: our server refuses to
start on an out-of-date schema (it never migrates itself), so (a) the last execution of the
migration job must have succeeded with the very image the service runs, and (b) when an ID token
can be minted, an authenticated MLflow API call must answer 200, which only a started server does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mlflow_gcp import budget
from mlflow_gcp.config import PUBLIC_MEMBERS
from mlflow_gcp.errors import GcpError, MlflowGcpError, PermissionDenied
from mlflow_gcp.gcp import (artifactregistry, iam, iampolicy, resourcemanager, run, secretmanager, serviceusage,
                            sql, storage)
from mlflow_gcp.gcp.errors import QuotaProjectMissing
from mlflow_gcp.ops import leftovers, live, status
from mlflow_gcp.plan import desired

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
QUOTA = "quota project"
INVOKER = "roles/run.invoker"
# Project roles that include run.routes.invoke.
PROJECT_INVOKE_ROLES = (INVOKER, "roles/run.admin", "roles/run.developer", "roles/editor", "roles/owner")


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


class _Facts:
    """What the checks read, each fetched once."""

    def __init__(self, ctx, url: str | None):
        self.ctx, self.url = ctx, url
        self._cache: dict = {}

    def get(self, key: str, read: Callable):
        if key not in self._cache:
            self._cache[key] = read()
        return self._cache[key]

    @property
    def service(self):
        c = self.ctx
        return self.get("service", lambda: run.get_service_raw(c.clients, c.cfg.region, c.cfg.service.name))

    @property
    def instance(self):
        return self.get("instance", lambda: sql.get_instance(self.ctx.clients, self.ctx.cfg.database.instance))

    @property
    def project_policy(self):
        return self.get("project_policy", lambda: resourcemanager.get_iam_policy(self.ctx.clients))

    @property
    def bucket(self):
        return self.get("bucket", lambda: storage.get_bucket(self.ctx.clients, self.ctx.cfg.bucket_name))

    @property
    def bucket_policy(self):
        return self.get("bucket_policy", lambda: storage.get_iam_policy(self.ctx.clients, self.ctx.cfg.bucket_name))

    @property
    def health(self):
        return self.get("health", lambda: live.probe(self.ctx, self.url, (self.service or {}).get("uri")))

    @property
    def token_email(self):
        def read():
            audience = self.url or (self.service or {}).get("uri")
            if not audience:
                return None, "the service has no URL"
            try:
                from mlflow_gcp.client import tokens

                token = tokens.resolve_source().fetch(audience.rstrip("/")).value
                return tokens.jwt_claims(token).get("email"), ""
            except Exception as err:  # noqa: BLE001 - any failure to mint is reported, not raised
                return None, f"no ID token could be minted ({getattr(err, 'message', None) or err.__class__.__name__})"
        return self.get("token", read)


def _credentials(f: _Facts) -> Check:
    number = resourcemanager.project_number(f.ctx.clients)
    return Check("credentials and project", PASS, f"project {f.ctx.cfg.project} (number {number}) is readable")


def _quota_project(f: _Facts) -> Check:
    """User credentials without a quota project make Service Usage and IAM Credentials bill
    gcloud's own project: every API then looks disabled (gcp.clients.Clients.classify says which)."""
    project = f.ctx.cfg.project
    try:
        serviceusage.disabled(f.ctx.clients, ["serviceusage.googleapis.com"])
    except QuotaProjectMissing as err:
        return Check(QUOTA, FAIL, f"Google bills project {err.consumer}, not {project}, for Service Usage calls",
                     f"gcloud auth application-default set-quota-project {project}")
    except PermissionDenied:
        return Check(QUOTA, WARN, "not checked: no permission to use Service Usage")
    return Check(QUOTA, PASS, f"API calls are billed to {project}")


def _apis(f: _Facts) -> Check:
    try:
        missing = serviceusage.disabled(f.ctx.clients, list(desired.REQUIRED_SERVICES))
    except PermissionDenied:
        return Check("APIs enabled", WARN, "not checked: no permission to list enabled APIs")
    if missing:
        return Check("APIs enabled", FAIL, "disabled: " + ", ".join(missing),
                     f"gcloud services enable {' '.join(missing)} --project {f.ctx.cfg.project}")
    return Check("APIs enabled", PASS, f"{len(desired.REQUIRED_SERVICES)} APIs enabled")


def _service_ready(f: _Facts) -> Check:
    raw = f.service
    if raw is None:
        return Check("service ready", FAIL, f"{f.ctx.cfg.service.name} is not deployed", "mlflow-gcp up")
    cond = raw.get("terminalCondition") or {}
    if cond.get("state") != "CONDITION_SUCCEEDED":
        return Check("service ready", FAIL, f"{cond.get('state')}: {cond.get('message', '')}".strip(": "),
                     "mlflow-gcp logs --severity ERROR, then mlflow-gcp up")
    rev = (raw.get("latestReadyRevision") or "").rsplit("/", 1)[-1]
    return Check("service ready", PASS, f"revision {rev} is ready at {raw.get('uri')}")


def _health(f: _Facts) -> Check:
    h = f.health
    if h.ok is None:
        return Check("health (ID token)", WARN, h.message, "mlflow-gcp env (token sources), or pass --url")
    if not h.ok:
        paused = live.is_paused(f.instance)
        return Check("health (ID token)", FAIL, h.message + (" (the database is paused)" if paused else ""),
                     "mlflow-gcp resume" if paused else "mlflow-gcp logs --severity WARNING")
    return Check("health (ID token)", PASS, h.message)


def _invoker(f: _Facts) -> Check:
    cfg = f.ctx.cfg
    if f.service is None:
        return Check("caller may invoke", WARN, "no service to check", "mlflow-gcp up")
    if _invoker_check_off(f):
        return Check("caller may invoke", PASS, "anyone may: Cloud Run's invoker check is off (public)")
    members = iampolicy.members_of(run.get_service_iam_policy(f.ctx.clients, cfg.region, cfg.service.name), INVOKER)
    email, why = f.token_email
    if email is None:
        return Check("caller may invoke", WARN, f"cannot tell who you are: {why}",
                     "mlflow-gcp env (token sources)")
    me = {f"user:{email}", f"serviceAccount:{email}"}
    if (me | set(PUBLIC_MEMBERS)) & members:
        return Check("caller may invoke", PASS, f"{email} holds {INVOKER}")
    for role in PROJECT_INVOKE_ROLES:
        if me & iampolicy.members_of(f.project_policy, role):
            return Check("caller may invoke", PASS, f"{email} holds {role} on the project")
    if any(m.startswith(("group:", "domain:")) for m in members):
        return Check("caller may invoke", WARN, f"{email} is not listed; it may be through a group or domain",
                     f"mlflow-gcp access grant {_member(email)}")
    return Check("caller may invoke", FAIL, f"{email} does not hold {INVOKER}",
                 f"mlflow-gcp access grant {_member(email)}")


def _member(email: str) -> str:
    return f"serviceAccount:{email}" if email.endswith(".gserviceaccount.com") else f"user:{email}"


def _invoker_check_off(f: _Facts) -> bool:
    return bool(f.service and f.service.get("invokerIamDisabled"))  # the service as read


def _public(f: _Facts) -> Check:
    cfg = f.ctx.cfg
    if f.service is None:
        return Check("no public access", WARN, "no service to check", "mlflow-gcp up")
    members = iampolicy.members_of(run.get_service_iam_policy(f.ctx.clients, cfg.region, cfg.service.name), INVOKER)
    public = sorted(set(PUBLIC_MEMBERS) & members)
    if _invoker_check_off(f):
        public.insert(0, "anyone (the invoker check is off: invokerIamDisabled)")
    if public and cfg.access.mode != "public":
        return Check("no public access", FAIL, f"{', '.join(public)} may invoke, but access.mode is private",
                     "mlflow-gcp up (turns the invoker check back on)" if _invoker_check_off(f)
                     else "mlflow-gcp up (removes them)")
    if public:
        return Check("no public access", WARN, "access.mode = public: anyone on the internet may use it")
    return Check("no public access", PASS, "only listed members may invoke")


def _database(f: _Facts) -> Check:
    inst = f.instance
    name = f.ctx.cfg.database.instance
    if inst is None:
        return Check("Cloud SQL running", FAIL, f"{name} does not exist", "mlflow-gcp up")
    if live.is_paused(inst):
        return Check("Cloud SQL running", WARN, f"{name} is paused (MLflow answers errors)", "mlflow-gcp resume")
    if inst.get("state") != "RUNNABLE":
        return Check("Cloud SQL running", FAIL, f"{name} is {inst.get('state')}",
                     f"gcloud sql instances describe {name} --project {f.ctx.cfg.project}")
    return Check("Cloud SQL running", PASS, f"{name} is RUNNABLE ({(inst.get('settings') or {}).get('tier')})")


def _storage_and_roles(f: _Facts) -> Check:
    cfg, clients = f.ctx.cfg, f.ctx.clients
    if f.bucket is None:
        return Check("bucket and server permissions", FAIL, f"bucket {cfg.bucket_name} does not exist", "mlflow-gcp up")
    missing = iampolicy.missing(f.bucket_policy, desired.bucket_bindings(cfg))
    missing += iampolicy.missing(f.project_policy, desired.project_bindings(cfg))
    if secretmanager.get_secret(clients, cfg.secret_id) is not None:
        missing += iampolicy.missing(secretmanager.get_iam_policy(clients, cfg.secret_id), desired.secret_bindings(cfg))
    if missing:
        return Check("bucket and server permissions", FAIL,
                     "server account lacks " + ", ".join(r for r, _ in missing), "mlflow-gcp up")
    return Check("bucket and server permissions", PASS,
                 f"gs://{cfg.bucket_name} exists; {cfg.server_service_account_email} has its roles")


BUILDER = "image builder account"


def _grant_command(cfg, role: str, where: str) -> str:
    member = desired.builder_member(cfg)
    if where == "project":
        return f"gcloud projects add-iam-policy-binding {cfg.project} --member={member} --role={role}"
    if where == "bucket":
        return f"gcloud storage buckets add-iam-policy-binding gs://{cfg.bucket_name} --member={member} --role={role}"
    return (f"gcloud artifacts repositories add-iam-policy-binding {cfg.service.repository} "
            f"--location={cfg.region} --project={cfg.project} --member={member} --role={role}")


def _builder(f: _Facts) -> Check:
    """Cloud Build builds as this account: without it or one of its roles, `up` and `upgrade` fail
    only at the build, after everything before it was done."""
    cfg, clients = f.ctx.cfg, f.ctx.clients
    if not desired.builds_image(cfg):
        return Check(BUILDER, PASS, "not needed: service.image is set, so nothing is built")
    email = cfg.builder_service_account_email
    account = iam.get_service_account(clients, email)
    if account is None:
        return Check(BUILDER, FAIL, f"{email} does not exist (Cloud Build builds the image as it)",
                     "mlflow-gcp up (creates it with its roles)")
    if account.get("disabled"):
        return Check(BUILDER, FAIL, f"{email} is disabled",
                     f"gcloud iam service-accounts enable {email} --project={cfg.project}")
    if f.bucket is None:
        return Check(BUILDER, FAIL, f"bucket {cfg.bucket_name} (the build source) does not exist", "mlflow-gcp up")
    if artifactregistry.get_repository(clients, cfg.region, cfg.service.repository) is None:
        return Check(BUILDER, FAIL, f"repository {cfg.service.repository} (where the image goes) does not exist",
                     "mlflow-gcp up")
    wanted = (
        ("project", f.project_policy, desired.builder_project_bindings(cfg)),
        ("bucket", f.bucket_policy, desired.builder_bucket_bindings(cfg)),
        ("repository", artifactregistry.get_iam_policy(clients, cfg.region, cfg.service.repository),
         desired.repository_bindings(cfg)),
    )
    missing = [(role, where) for where, policy, bindings in wanted for role, _ in iampolicy.missing(policy, bindings)]
    if missing:
        return Check(BUILDER, FAIL, f"{email} lacks " + ", ".join(f"{r} on the {w}" for r, w in missing)
                     + " (the next build fails)", " && ".join(_grant_command(cfg, r, w) for r, w in missing))
    return Check(BUILDER, PASS, f"{email} may write build logs, read the source in gs://{cfg.bucket_name} "
                 f"and push to {cfg.service.repository}")


def _allowed_hosts(f: _Facts) -> Check:
    raw = f.service
    if raw is None:
        return Check("allowed hosts", WARN, "no service to check", "mlflow-gcp up")
    from urllib.parse import urlparse

    hosts = set((status.env_value(raw, "ALLOWED_HOSTS") or "").split(","))
    urls = [u for u in [raw.get("uri"), *(raw.get("urls") or [])] if u]
    missing = sorted({urlparse(u).hostname for u in urls} - hosts)
    if missing:
        return Check("allowed hosts", FAIL, "ALLOWED_HOSTS lacks " + ", ".join(missing) + " (MLflow answers 403)",
                     "mlflow-gcp up")
    return Check("allowed hosts", PASS, f"{len(urls)} service URL(s) allowed")


def _schema(f: _Facts) -> Check:
    cfg = f.ctx.cfg
    raw = f.service
    job = run.get_job(f.ctx.clients, cfg.region, cfg.migrate_job_name)
    if raw is None or job is None:
        return Check("schema at head", FAIL, "no service or migration job", "mlflow-gcp up")
    service_image = (((raw.get("template") or {}).get("containers") or [{}])[0]).get("image")
    job_image = ((((job.get("template") or {}).get("template") or {}).get("containers") or [{}])[0]).get("image")
    last = job.get("latestCreatedExecution") or {}
    outcome = last.get("completionStatus")
    if outcome and outcome != "EXECUTION_SUCCEEDED":
        return Check("schema at head", FAIL, f"the last migration ({last.get('name', '').rsplit('/', 1)[-1]}) "
                     f"ended {outcome}", "mlflow-gcp logs --severity ERROR, then mlflow-gcp up")
    if job_image != service_image:
        return Check("schema at head", WARN, "the migration job runs another image than the service",
                     "mlflow-gcp up")
    if not outcome:
        return Check("schema at head", WARN, "the migration job has not run", "mlflow-gcp up")
    if f.health.ok:
        return Check("schema at head", PASS, "migrated with the served image, and the server answers the API")
    return Check("schema at head", PASS, "the last migration succeeded with the served image "
                 "(the API was not reached to confirm)")


def _version_skew(f: _Facts) -> Check:
    from importlib import metadata

    raw = f.service
    server = status.mlflow_version_of(((((raw or {}).get("template") or {}).get("containers") or [{}])[0]).get("image"),
                                      ((((raw or {}).get("template") or {}).get("containers") or [{}])[0]).get("env"))
    client = None
    for dist in ("mlflow", "mlflow-skinny"):
        try:
            client = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    if not server or not client:
        return Check("client/server MLflow versions", WARN,
                     f"client {client or 'not installed'}, server {server or 'unknown'}")
    if client.split(".")[:2] != server.split(".")[:2]:
        return Check("client/server MLflow versions", WARN, f"client {client}, server {server}",
                     f"pip install 'mlflow=={server}' (or mlflow-gcp upgrade --mlflow-version {client})")
    return Check("client/server MLflow versions", PASS, f"client {client}, server {server}")


def _budget(f: _Facts) -> Check:
    cfg = f.ctx.cfg
    try:
        cfg.pool()
    except MlflowGcpError as err:
        return Check("connection budget", FAIL, str(err), "mlflow-gcp scale --max-instances N")
    raw, inst = f.service, f.instance
    tier = ((inst or {}).get("settings") or {}).get("tier") or cfg.database.tier
    max_conn = budget.tier_max_connections(tier)
    if raw is not None:
        share = status.env_value(raw, "DB_CONNECTIONS")
        instances = int(((raw.get("template") or {}).get("scaling") or {}).get("maxInstanceCount") or 0)
        if share and share.isdigit():
            used = int(share) * instances + budget.RESERVED_CONNECTIONS
            if used > max_conn:
                return Check("connection budget", FAIL, f"{instances} x {share} + {budget.RESERVED_CONNECTIONS} = "
                             f"{used} connections but {tier} allows {max_conn}", "mlflow-gcp up")
            return Check("connection budget", PASS, f"at most {used} of {max_conn} connections ({tier})")
    return Check("connection budget", PASS, f"the config fits {tier} ({max_conn} connections)")


def housekeeping_prefixes(cfg) -> set[str]:
    """Prefixes our own rules clear (build sources, upload parts): never model artifacts."""
    user_prefix = cfg.artifacts.lifecycle.prefix
    return {p for r in desired.lifecycle_rules(cfg) for p in (r.get("condition") or {}).get("matchesPrefix") or []
            if p != user_prefix}


def _lifecycle(f: _Facts) -> Check:
    cfg = f.ctx.cfg
    bucket = f.bucket
    if bucket is None:
        return Check("lifecycle safety", WARN, "no bucket to check", "mlflow-gcp up")
    rules = (bucket.get("lifecycle") or {}).get("rule") or []
    whole = [r for r in rules if (r.get("action") or {}).get("type") == "Delete"
             and not ((r.get("condition") or {}).get("matchesPrefix"))]
    if whole:
        return Check("lifecycle safety", FAIL, "a Delete rule covers the whole bucket, registered models included",
                     "mlflow-gcp lifecycle set --action archive --days 90")
    own = housekeeping_prefixes(cfg)
    deletes = [status.describe_rule(r) for r in rules if (r.get("action") or {}).get("type") == "Delete"
               and not set((r.get("condition") or {}).get("matchesPrefix") or []) <= own]
    if deletes:
        return Check("lifecycle safety", WARN, "; ".join(deletes) + " (checked against models when set)",
                     "mlflow-gcp lifecycle show")
    return Check("lifecycle safety", PASS, "no rule deletes artifacts")


KEYS, COMPUTE = "no old key files", "default compute account roles"


def _old_keys(f: _Facts) -> Check:
    cfg = f.ctx.cfg
    try:
        found = leftovers.key_findings(f.ctx.clients, cfg.project,
                                       {cfg.server_service_account_email, cfg.builder_service_account_email})
    except PermissionDenied as err:
        # Listing accounts and keys needs iam.serviceAccounts.list / serviceAccountKeys.list.
        return Check(KEYS, WARN, f"not checked: {err.message}", err.hint or "")
    if not found:
        return Check(KEYS, PASS, "no user-managed service-account keys")
    return Check(KEYS, FAIL, "; ".join(what for what, _ in found) + " (remove once no client uses it)",
                 "\n".join(command for _, command in found))


def _compute_roles(f: _Facts) -> Check:
    """The old server ran as the default compute account with broad roles; ours does not."""
    cfg = f.ctx.cfg
    members = [f"serviceAccount:{leftovers.compute_account(f.ctx.project_number)}",
               f"serviceAccount:{leftovers.OLD_CLIENT_ACCOUNT}@{cfg.project}.iam.gserviceaccount.com"]
    found = leftovers.binding_findings(f.project_policy, cfg.project, members)
    if f.bucket is not None:
        found += leftovers.binding_findings(f.bucket_policy, cfg.project, members, where=f"gs://{cfg.bucket_name}")
    if not found:
        return Check(COMPUTE, PASS, "neither the default compute account nor the old client account holds broad roles")
    return Check(COMPUTE, WARN, "; ".join(what for what, _ in found)
                 + f" (MLflow runs as {cfg.server_service_account_email}; remove if nothing else uses them)",
                 "\n".join(command for _, command in found))


CHECKS = (_credentials, _quota_project, _apis, _service_ready, _health, _invoker, _public, _database, _storage_and_roles,
          _builder, _allowed_hosts, _schema, _version_skew, _budget, _lifecycle, _old_keys, _compute_roles)
NAMES = ("credentials and project", QUOTA, "APIs enabled", "service ready", "health (ID token)", "caller may invoke",
         "no public access", "Cloud SQL running", "bucket and server permissions", BUILDER, "allowed hosts",
         "schema at head", "client/server MLflow versions", "connection budget", "lifecycle safety", KEYS, COMPUTE)


def run_checks(ctx, url: str | None = None) -> list[Check]:
    facts = _Facts(ctx, url)
    out = []
    for check, name in zip(CHECKS, NAMES):
        try:
            out.append(check(facts))
        except GcpError as err:
            out.append(Check(name, FAIL, err.message, err.hint or ""))
        if name == "credentials and project" and out[-1].status == FAIL:
            break  # nothing else can be read
    return out
