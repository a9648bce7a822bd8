"""Cloud Logging v2: entries:list over entries that tests seed (add_entry) or clients write
(entries:write). The filter understands the common subset of the Logging query language: comparisons
field OP "value" with OP in = != >= <= > < : =~ over dotted fields (resource.type,
resource.labels.service_name, severity (ordered), timestamp, logName, textPayload...), combined
with AND (or juxtaposition), OR, NOT and parentheses."""

from __future__ import annotations

import copy
import re

from ..core.api import ApiModule, Request, handles, now
from ..core.errors import invalid_argument

_SEVERITY = ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]
_TOKEN = re.compile(r'\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<kw>AND|OR|NOT)(?=[\s(])|'
                    r'(?P<cmp>[A-Za-z_][\w.\-/"]*\s*(?:>=|<=|!=|=~|=|>|<|:)\s*'
                    r'(?:"(?:[^"\\]|\\.)*"|[^\s()]+)))')
_CMP = re.compile(r'([A-Za-z_][\w.\-/"]*)\s*(>=|<=|!=|=~|=|>|<|:)\s*(.*)', re.S)


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


def parse_filter(text: str):
    """A predicate over entries for a Logging query: comparisons `field OP value`, combined
    with AND (or juxtaposition), OR, NOT and parentheses."""
    tokens, pos, text = [], 0, (text or "").strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise invalid_argument(f"Unparseable filter: {text[pos:]!r}", field="filter")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    stream = list(reversed(tokens))

    def peek():
        return stream[-1] if stream else (None, None)

    def or_expr():
        parts = [and_expr()]
        while peek() == ("kw", "OR"):
            stream.pop()
            parts.append(and_expr())
        return lambda e: any(p(e) for p in parts)

    def and_expr():
        parts = [unary()]
        while peek()[0] not in (None, "rp") and peek() != ("kw", "OR"):
            if peek() == ("kw", "AND"):
                stream.pop()
            parts.append(unary())
        return lambda e: all(p(e) for p in parts)

    def unary():
        kind, value = stream.pop() if stream else (None, None)
        if (kind, value) == ("kw", "NOT"):
            inner = unary()
            return lambda e: not inner(e)
        if kind == "lp":
            inner = or_expr()
            if not stream or stream.pop()[0] != "rp":
                raise invalid_argument("Unbalanced parentheses in filter.", field="filter")
            return inner
        if kind != "cmp":
            raise invalid_argument(f"Unparseable filter near {value!r}.", field="filter")
        field, op, want = _CMP.match(value).groups()
        if want.startswith('"'):
            want = want[1:-1].replace('\\"', '"')
        return lambda e: _compare(field, _get(e, field), op, want)

    if not tokens:
        return lambda e: True
    predicate = or_expr()
    if stream:
        raise invalid_argument(f"Unparseable filter near {stream[-1][1]!r}.", field="filter")
    return predicate


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
        matches = parse_filter(body.get("filter", ""))
        entries = []
        for n in names:
            entries += self.state.get(n.split("/")[1], [])
        out = []
        for e in entries:
            if matches(e):
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
