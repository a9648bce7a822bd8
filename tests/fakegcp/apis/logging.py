"""Cloud Logging v2: entries:list over entries that tests seed (add_entry) or clients write
(entries:write). The filter understands what `mlflow-gcp logs` needs: clauses joined by AND
(or juxtaposed) of the form field OP "value" with OP in = != >= <= > < : over dotted fields
(resource.type, resource.labels.service_name, severity, timestamp, logName, textPayload...)."""

from __future__ import annotations

import copy
import re

from ..core.api import ApiModule, Request, handles, now
from ..core.errors import invalid_argument

_SEVERITY = ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]
_CLAUSE = re.compile(r'\s*(NOT\s+)?([A-Za-z_][\w.\-/"]*)\s*(>=|<=|!=|=~|=|>|<|:)\s*("(?:[^"\\]|\\.)*"|\S+)\s*')


def _get(entry: dict, dotted: str):
    value = entry
    for part in dotted.replace('"', "").split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _compare(field: str, actual, op: str, want: str) -> bool:
    if actual is None:
        return op == "!="
    if field == "severity":
        a = _SEVERITY.index(actual) if actual in _SEVERITY else 0
        w = _SEVERITY.index(want) if want in _SEVERITY else 0
    else:
        a, w = str(actual), want
    if op == ":":
        return want.lower() in str(actual).lower()
    if op == "=~":
        return re.search(want, str(actual)) is not None
    return {"=": a == w, "!=": a != w, ">=": a >= w, "<=": a <= w, ">": a > w, "<": a < w}[op]


def parse_filter(text: str) -> list[tuple[bool, str, str, str]]:
    clauses = []
    text = re.sub(r"\bAND\b", " ", text or "")
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _CLAUSE.match(text, pos)
        if not m:
            raise invalid_argument(f"Unparseable filter: {text[pos:]!r}", field="filter")
        negate, field, op, value = m.groups()
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        clauses.append((bool(negate), field, op, value))
        pos = m.end()
    return clauses


class Logging(ApiModule):
    name = "logging"
    versions = ("v2",)
    service = "logging.googleapis.com"
    title = "Cloud Logging API"

    def reset(self) -> None:
        self.state: dict[str, list[dict]] = {}  # project -> entries (oldest first)

    def snapshot(self) -> dict:
        return {}

    def project_of(self, req: Request) -> str | None:
        names = (req.body or {}).get("resourceNames") or (req.body or {}).get("projectIds") or []
        for n in names:
            return n.split("/")[1] if "/" in n else n
        return None

    def add_entry(self, project: str, text: str | None = None, severity: str = "INFO",
                  resource: dict | None = None, timestamp: str | None = None, **extra) -> dict:
        """For tests: a log entry as Cloud Run would write it."""
        entry = {
            "logName": extra.pop("logName", f"projects/{project}/logs/run.googleapis.com%2Fstdout"),
            "resource": resource or {"type": "cloud_run_revision", "labels": {}},
            "timestamp": timestamp or now(), "receiveTimestamp": now(), "severity": severity,
            "insertId": f"{len(self.state.get(project, [])):016x}",
        }
        if text is not None:
            entry["textPayload"] = text
        entry.update(extra)
        self.state.setdefault(project, []).append(entry)
        return entry

    _AUDIT_RESOURCE = {"run": "cloud_run_revision", "sqladmin": "cloudsql_database",
                       "storage": "gcs_bucket", "iam": "service_account",
                       "secretmanager": "audited_resource", "cloudresourcemanager": "project"}

    def audit(self, project: str, api: str, service: str, method_id: str, resource: str) -> None:
        """An Admin Activity audit entry for a mutating call the fake accepted (methodName is the
        discovery method id, an approximation of Google's names)."""
        labels = {"project_id": project}
        if api == "run" and "/services/" in resource:
            labels["service_name"] = resource.split("/services/")[1].split("/")[0]
        self.add_entry(
            project, severity="NOTICE",
            logName=f"projects/{project}/logs/cloudaudit.googleapis.com%2Factivity",
            resource={"type": self._AUDIT_RESOURCE.get(api, "audited_resource"), "labels": labels},
            protoPayload={"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                          "serviceName": service, "methodName": method_id,
                          "resourceName": resource, "status": {},
                          "authenticationInfo": {"principalEmail": "fake-user@example.com"}})

    @handles("logging.entries.write")
    def write(self, req: Request) -> dict:
        body = req.body or {}
        for e in body.get("entries") or []:
            entry = {**{k: body[k] for k in ("logName", "resource", "labels") if k in body}, **e}
            project = entry.get("logName", "projects/unknown/").split("/")[1]
            entry.setdefault("timestamp", now())
            self.add_entry(project, **{k: v for k, v in entry.items() if k != "project"})
        return {}

    @handles("logging.entries.list")
    def list(self, req: Request) -> dict:
        body = req.body or {}
        names = body.get("resourceNames") or [f"projects/{p}" for p in body.get("projectIds") or []]
        if not names:
            raise invalid_argument("resourceNames is required.", field="resource_names")
        clauses = parse_filter(body.get("filter", ""))
        entries = []
        for n in names:
            entries += self.state.get(n.split("/")[1], [])
        out = []
        for e in entries:
            ok = all(_compare(f, _get(e, f), op, v) != neg for neg, f, op, v in clauses)
            if ok:
                out.append(copy.deepcopy(e))
        order = (body.get("orderBy") or "timestamp asc").lower()
        out.sort(key=lambda e: e["timestamp"], reverse="desc" in order)
        size = int(body.get("pageSize") or 1000)
        start = int(body.get("pageToken") or 0)
        page = out[start:start + size]
        result = {"entries": page} if page else {}
        if start + size < len(out):
            result["nextPageToken"] = str(start + size)
        return result
