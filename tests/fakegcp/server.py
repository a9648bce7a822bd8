"""FakeGcp: one HTTP server serving every faked Google API under /<api>/.

Request pipeline: split /<api>/<path>; log; match the discovery method; latency; validate query
and body against discovery; refuse with SERVICE_DISABLED when the API is off; injected faults;
the API module's handler (under one lock, so state changes are atomic); JSON response.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from .apis import ALL_APIS
from .core import discovery
from .core.api import ApiModule, Request, project_number
from .core.errors import GcpError, invalid_argument, org_policy_violation, service_disabled

# Organization policies that organizations created since 2024 enforce by default ("secure by
# default"); FakeGcp(org_policies=NEW_ORG_POLICIES) or fake.enforce_org_policy(name) turns them on.
DOMAIN_RESTRICTED_SHARING = "iam.allowedPolicyMemberDomains"
NO_SERVICE_ACCOUNT_KEYS = "iam.disableServiceAccountKeyCreation"
NEW_ORG_POLICIES = (DOMAIN_RESTRICTED_SHARING, NO_SERVICE_ACCOUNT_KEYS)
from .core.snapshot import normalize
from .core.faults import READ_VERBS, Fault, Faults, Latency, RecordedRequest
from .core import timing


class FakeGcp:
    """A stateful fake of the Google Cloud REST APIs the tool uses.

    >>> fake = FakeGcp(); fake.start(); fake.url   # 'http://127.0.0.1:PORT'
    >>> fake.stop()
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, op_polls: int = 1,
                 services_enabled: bool = True, org_policies: tuple[str, ...] = (), strict: bool = True):
        self.host = host
        self.port = port
        self.op_polls = op_polls
        self.services_enabled_by_default = services_enabled
        self._services_enabled_initially = services_enabled
        self.lock = threading.RLock()
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self.internal_errors: list[str] = []  # tracebacks of bugs in the fake itself
        self.denied_permissions: set[str] = set()  # left out of testIamPermissions answers
        # Opt-in: accepted mutations leave Admin Activity audit entries in the fake logging.
        self.audit_logs = False
        self.globally_disabled: set[str] = set()
        self._org_policies_initially = tuple(org_policies)
        self.org_policies: set[str] = set(org_policies)  # enforced constraints (see NEW_ORG_POLICIES)
        self.clock = timing.FakeClock()
        self._strict_initially = strict
        self._strictness_defaults()
        self.modules: dict[str, ApiModule] = {cls.name: cls(self) for cls in ALL_APIS}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> "FakeGcp":
        fake = self

        class Handler(_HttpHandler):
            pass

        Handler.fake = fake
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="fakegcp",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeGcp":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def endpoint(self, api: str, version: str | None = None) -> str:
        """The api_endpoint for googleapiclient: <root>/<api>/<servicePath>."""
        module = self.modules[api]
        doc = discovery.load(api, version or module.versions[0])
        return f"{self.url}/{api}/{doc['servicePath']}"

    def reset(self, op_polls: int = 1) -> None:
        """Fresh state, log and faults (the server keeps running)."""
        with self.lock:
            self.op_polls = op_polls
            self.services_enabled_by_default = self._services_enabled_initially
            self.faults.clear()
            self.requests.clear()
            self.internal_errors.clear()
            self.denied_permissions.clear()
            self.audit_logs = False
            self.globally_disabled.clear()
            self.org_policies = set(self._org_policies_initially)
            self._strictness_defaults()
            for module in self.modules.values():
                module.reset()

    def _strictness_defaults(self) -> None:
        # Google's timing, on by default (see core/timing.py); a test turns one off only to test
        # something else.
        self.strict(self._strict_initially)
        self.durations: list[tuple[str, str, float]] = []  # set_duration's, before timing.DURATIONS
        # Set by user_credentials_without_quota_project: the project gcloud's own OAuth client
        # bills, which Service Usage and IAM Credentials then name as the consumer.
        self.client_project: str | None = None

    # ---- time --------------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock()

    def advance(self, seconds: float) -> float:
        """Move the fake's clock (what a client's wait does through POST /_fake/clock:sleep)."""
        return self.clock.advance(seconds)

    def operation_seconds(self, api: str, target: str) -> float:
        if not self.realistic_durations:
            return 0.0
        return timing.duration(api, target, (*self.durations, *timing.DURATIONS))

    def set_duration(self, api: str, target_regex: str, seconds: float) -> None:
        """Operations of `api` whose "<resource> <kind>" matches take `seconds` (until reset)."""
        self.durations.insert(0, (api, target_regex, seconds))

    def strict(self, on: bool) -> None:
        """All of Google's timing on (the default) or off: operation durations, API enablement
        and service-account propagation delays."""
        self.realistic_durations = on
        self.api_propagation_seconds = timing.API_PROPAGATION_SECONDS if on else 0.0
        self.account_propagation_seconds = timing.ACCOUNT_PROPAGATION_SECONDS if on else 0.0

    def user_credentials_without_quota_project(self, client_project: str = "764086051850") -> None:
        """Act as Google does for user credentials with no quota project: Service Usage and IAM
        Credentials bill the OAuth client's project (gcloud's own, by default its real number)
        and answer SERVICE_DISABLED naming it as the consumer, unless the request names a quota
        project (header x-goog-user-project, what google-auth's with_quota_project sends)."""
        self.client_project = client_project

    # ---- state and log ---------------------------------------------------------------------

    def api(self, name: str) -> ApiModule:
        return self.modules[name]

    def state(self, api: str) -> dict:
        """The API's live state dict (resource name -> resource JSON); read it in assertions."""
        return self.modules[api].state

    def snapshot(self, ignore: tuple[str, ...] = ()) -> dict:
        """Every API's resources, normalized so that two identical runs compare equal
        (timestamps, etags, uids, random ids, digests and secret values masked; keys named in
        `ignore`, e.g. "generation", dropped too). Operations and the request log are left out."""
        with self.lock:
            return {name: normalize(module.snapshot(), frozenset(ignore))
                    for name, module in self.modules.items()}

    def mutating_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.mutating]

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()

    # ---- faults ------------------------------------------------------------------------------

    def fail(self, status: int = 503, at_call: int = 1, method: str | None = None,
             path_regex: str | None = None, api: str | None = None, method_id: str | None = None,
             message: str | None = None, reason: str | None = None, times: int = 1,
             grpc_status: str | None = None, mutating_only: bool = False,
             after_apply: bool = False, details: list | None = None) -> Fault:
        """Fail the at_call-th request matching the filters (and the next times-1 ones).

        Counting starts now. after_apply=True lets the call change state first and then answers
        with the error, as when a response is lost."""
        rule = Fault(status, at_call, times, method, path_regex, api, method_id, mutating_only,
                     message, reason, grpc_status, after_apply, list(details or []))
        with self.faults.lock:
            self.faults.rules.append(rule)
        return rule

    def deny_permission(self, permission: str, method_id: str | None = None,
                        path_regex: str | None = None, times: int = 10**9, **kw) -> Fault:
        """Answer matching calls (default: every call of method_id) with the 403 Google sends
        when the caller lacks an IAM permission: status PERMISSION_DENIED, a message naming the
        permission and the resource, and an ErrorInfo with reason IAM_PERMISSION_DENIED and
        metadata.permission. Also removes the permission from testIamPermissions answers."""
        self.denied_permissions.add(permission)
        api = (method_id or "").split(".")[0] or kw.pop("api", None)
        api = {"sql": "sqladmin"}.get(api, api)
        service = f"{api}.googleapis.com" if api else "googleapis.com"
        message = (f"Permission '{permission}' denied on resource (or it may not exist).")
        details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "IAM_PERMISSION_DENIED", "domain": "iam.googleapis.com",
                    "metadata": {"permission": permission, "service": service}}]
        return self.fail(status=403, method_id=method_id, path_regex=path_regex, times=times,
                         message=message, grpc_status="PERMISSION_DENIED", reason="forbidden",
                         details=details, **kw)

    def fail_mutation(self, n: int, status: int = 503, **kw) -> Fault:
        """Fail the n-th mutating call from now (any API), e.g. to interrupt `up` at step n."""
        return self.fail(status=status, at_call=n, mutating_only=True, **kw)

    def fail_next_operation(self, api: str | None = None, message: str = "Injected operation failure.",
                            status: str = "INTERNAL", code: int = 500,
                            target_regex: str | None = None) -> None:
        """The next long-running operation created (in `api`, or any) finishes with an error.

        target_regex narrows it to operations whose "<resource name> <kind>" it matches, e.g.
        r"services/mlflow " (a service rollout, not the migration job's execution),
        r"jobs/.* Execution", r"instances/mlflow-db BACKUP_VOLUME"."""
        with self.faults.lock:
            self.faults.operation_failures.setdefault(api, []).append(
                (target_regex, GcpError(code, message, status)))

    def _take_operation_failure(self, api: str, target: str = ""):
        with self.faults.lock:
            for key in (api, None):
                queue = self.faults.operation_failures.get(key) or []
                for i, (regex, error) in enumerate(queue):
                    if regex is None or re.search(regex, target):
                        return queue.pop(i)[1]
        return None

    def add_latency(self, seconds: float, api: str | None = None, path_regex: str | None = None,
                    method: str | None = None) -> None:
        with self.faults.lock:
            self.faults.latencies.append(Latency(seconds, api, path_regex, method))

    def clear_faults(self) -> None:
        self.faults.clear()

    def disable_api(self, api: str, project: str | None = None) -> None:
        """Calls to `api` answer 403 SERVICE_DISABLED until serviceusage enables it."""
        service = self.modules[api].service
        with self.lock:
            if project is None:
                self.globally_disabled.add(service)
                self.modules["serviceusage"].forget(service)
            else:
                self.modules["serviceusage"].set_state(project, service, "DISABLED")

    def enable_api(self, api: str, project: str | None = None, just_now: bool = False) -> None:
        """Enable `api`; just_now=True: as if Service Usage enabled it in `project` this moment,
        so its calls still answer SERVICE_DISABLED for api_propagation_seconds."""
        service = self.modules[api].service
        with self.lock:
            if project is None:
                self.globally_disabled.discard(service)
            else:
                usage = self.modules["serviceusage"]
                usage.set_state(project, service, "ENABLED")
                if just_now:
                    usage.enabled_at[usage._key(project, service)] = self.now()

    def account_visible(self, email: str) -> bool:
        """Whether other APIs see this service account yet (it exists, and was created at least
        account_propagation_seconds ago on the fake's clock)."""
        iam = self.modules["iam"]
        if email not in iam.state:
            return False
        return self.clock() >= iam.created_at.get(email, 0.0) + self.account_propagation_seconds

    def check_account_reference(self, email: str, field: str) -> None:
        """Refuse a request body naming a service account created too recently for this API to
        know it, as Google does (400 "does not exist") while the account propagates."""
        iam = self.modules["iam"]
        if email in iam.state and not self.account_visible(email):
            raise invalid_argument(f"Service account {email} does not exist.", field=field)

    def account_deleted(self, email: str, unique_id: str) -> None:
        """Bindings of a deleted service account stay in every policy, renamed as Google does:
        serviceAccount:x -> deleted:serviceAccount:x?uid=N."""
        old, new = f"serviceAccount:{email}", f"deleted:serviceAccount:{email}?uid={unique_id}"
        for module in self.modules.values():
            policies = getattr(getattr(module, "iam", None), "policies", {})
            for policy in policies.values():
                for binding in policy.get("bindings", []):
                    binding["members"] = sorted(new if m == old else m for m in binding["members"])

    def enforce_org_policy(self, *constraints: str) -> None:
        """Enforce organization policy constraints from now on: DOMAIN_RESTRICTED_SHARING (no
        allUsers / allAuthenticatedUsers in any IAM policy), NO_SERVICE_ACCOUNT_KEYS (keys.create
        refused), both as a new organization has them."""
        unknown = set(constraints) - set(NEW_ORG_POLICIES)
        if unknown:
            raise ValueError(f"the fake knows only {NEW_ORG_POLICIES}, not {sorted(unknown)}")
        self.org_policies.update(constraints)

    def check_member(self, member: str) -> None:
        """Refuse an IAM member naming a user-managed service account the fake's IAM lacks, and
        the public principals under domain-restricted sharing."""
        if member in ("allUsers", "allAuthenticatedUsers") and DOMAIN_RESTRICTED_SHARING in self.org_policies:
            raise org_policy_violation(
                "One or more users named in the policy do not belong to a permitted customer,  "
                "perhaps due to an organization policy.", DOMAIN_RESTRICTED_SHARING,
                f"User {member} is not in permitted organization.", f"orgpolicy:configvalue={member}")
        kind, _, email = member.partition(":")
        if kind != "serviceAccount" or not email.endswith(".iam.gserviceaccount.com"):
            return
        if not self.account_visible(email):
            raise invalid_argument(f"Service account {email} does not exist.",
                                   field="policy.bindings.members")

    def service_enabled(self, project: str | None, service: str) -> bool:
        return self.modules["serviceusage"].is_usable(project, service)

    # ---- dispatch ----------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict, raw: bytes) -> tuple[int, dict, bytes]:
        split = urlsplit(target)
        if split.path.startswith("/_fake/clock"):
            return self._clock_endpoint(method, split.path, raw)
        _, _, rest = split.path.partition("/")
        api, _, raw_path = rest.partition("/")
        query = parse_qs(split.query, keep_blank_values=True)
        rec = RecordedRequest(method, api, unquote(raw_path),
                              {k: v[-1] if len(v) == 1 else v for k, v in query.items()}, None)
        with self.lock:
            self.requests.append(rec)
        try:
            try:
                result = self._dispatch(rec, api, raw_path, query, headers, raw)
            except GcpError:
                raise
            except Exception as exc:  # a bug in the fake: answer 500 and keep the traceback
                self.internal_errors.append(traceback.format_exc())
                sys.stderr.write(f"fakegcp: {rec.method} /{api}/{rec.path}: {self.internal_errors[-1]}")
                raise GcpError(500, f"fakegcp internal error: {type(exc).__name__}: {exc}")
        except GcpError as err:
            rec.status = err.code
            return err.code, {"Content-Type": "application/json; charset=UTF-8"}, \
                json.dumps(err.body()).encode()
        if result is None:
            rec.status = 204
            return 204, {}, b""
        status, payload = result if isinstance(result, tuple) else (200, result)
        rec.status = status
        if isinstance(payload, (bytes, bytearray)):
            return status, {"Content-Type": "application/octet-stream"}, bytes(payload)
        return status, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(payload).encode()

    def _clock_endpoint(self, method: str, path: str, raw: bytes) -> tuple[int, dict, bytes]:
        """GET /_fake/clock -> {"now": seconds}; POST /_fake/clock:sleep {"seconds": s} advances
        it: how a client under emulation reads the time and waits (not a Google API, not logged)."""
        if method == "POST" and path == "/_fake/clock:sleep":
            try:
                seconds = float(json.loads(raw or b"{}").get("seconds", 0))
            except (ValueError, AttributeError):
                return 400, {}, b""
            self.advance(seconds)
        elif method != "GET" or path != "/_fake/clock":
            return 404, {}, b""
        return 200, {"Content-Type": "application/json"}, json.dumps({"now": self.now()}).encode()

    def _dispatch(self, rec: RecordedRequest, api: str, raw_path: str, query, headers, raw):
        module = self.modules.get(api)
        if module is None:
            raise GcpError(404, f"The fake serves no API named {api!r}.")
        raw_path = module.alias_path(raw_path)
        route, path_params = discovery.match(api, list(module.versions), rec.method, raw_path)
        if route is None:
            rec.mutating = rec.method not in ("GET", "HEAD")
            if discovery.path_exists(api, list(module.versions), raw_path):
                raise GcpError(405, f"Method {rec.method} not allowed on /{api}/{rec.path}.",
                               "INVALID_ARGUMENT", "methodNotAllowed")
            raise GcpError(404, f"The requested URL /{api}/{rec.path} was not found on this "
                           "server (no discovery method matches).")
        rec.method_id, rec.version = route.method_id, route.version
        rec.mutating = route.verb not in READ_VERBS and rec.method != "GET"

        delay = self.faults.delay(rec)
        if delay:
            time.sleep(delay)

        is_media = route.template.startswith("/upload") or (
            query.get("uploadType", [""])[-1] in ("media", "multipart", "resumable"))
        body = None
        if raw and not is_media:
            try:
                body = json.loads(raw)
            except ValueError:
                raise invalid_argument("Invalid JSON payload received. Unexpected token.")
        rec.body = body
        params = dict(path_params)
        params.update(discovery.check_query(route, query, path_params))
        discovery.check_body(route, body)

        req = Request(rec.method, api, route.version, route.method_id, rec.path, params, body,
                      raw if is_media else b"", headers)
        if self.client_project and api in ("serviceusage", "iamcredentials") and not any(
                k.lower() == "x-goog-user-project" for k in headers):
            raise service_disabled(module.service, module.title, project_number(self.client_project))
        if module.service and api != "serviceusage":
            project = module.project_of(req)
            if not self.service_enabled(project, module.service):
                raise service_disabled(module.service, module.title,
                                       project_number(project or "unknown-project"))

        fault = self.faults.check(rec)
        if fault is not None:
            rec.injected = True
            if not fault.after_apply:
                raise fault.error()
        handler = module.handler_for(route.version, route.method_id)
        if handler is None:
            raise GcpError(501, f"The fake does not implement {route.method_id} "
                           f"({route.version}).", "UNIMPLEMENTED", "notImplemented")
        with self.lock:
            try:
                result = handler(req)
            except GcpError:
                if fault is None:
                    raise
                raise fault.error()  # the answer is lost, whatever it was
            if self.audit_logs and rec.mutating and api != "logging":
                self._audit(module, req)
        if fault is not None:
            raise fault.error()
        return result

    def _audit(self, module: ApiModule, req: Request) -> None:
        project = module.project_of(req)
        if not project:
            return
        resource = next((req.params[k] for k in ("name", "resource", "parent") if req.params.get(k)), None)
        if resource is None:
            resource = "/".join(f"{k}/{req.params[k]}" for k in ("project", "instance", "bucket")
                                if req.params.get(k)) or req.path
        self.modules["logging"].audit(project, module.name, module.service, req.method_id, resource)


class _HttpHandler(BaseHTTPRequestHandler):
    fake: FakeGcp
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, keep-alive clients wait ~40 ms each.
    disable_nagle_algorithm = True
    server_version = "fakegcp"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, headers, body = self.fake.handle(self.command, self.path, dict(self.headers), raw)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass  # the request log is fake.requests; stderr noise helps nobody
