"""`logs`: Cloud Logging entries of the service and the migration job, one line each.

Two filters (service revisions, migration job executions) are read separately and merged by time:
simple AND-only filters, which Cloud Logging serves from its indexes. `--audit` reads the
project's admin-activity audit log instead, for each of our resources.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable

from mlflow_gcp.errors import ConfigError
from mlflow_gcp.gcp import logging as glog

SEVERITIES = ("DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY")
_DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# --follow polls this often; Cloud Logging's read quota is 60 requests a minute per project and
# every poll makes two.
FOLLOW_INTERVAL_SECONDS = 5.0
AUDIT_LOG = "cloudaudit.googleapis.com%2Factivity"


def parse_since(text: str | None, now: dt.datetime) -> str | None:
    """'90s', '15m', '1h', '2d', '1w' -> an RFC 3339 timestamp that long before `now`."""
    if not text:
        return None
    m = _DURATION_RE.match(text.strip())
    if not m:
        raise ConfigError([("since", f"{text!r} is not a duration such as 30m, 1h or 2d")])
    start = now - dt.timedelta(seconds=int(m[1]) * _UNIT_SECONDS[m[2]])
    return start.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_severity(severity: str | None) -> str | None:
    if severity is None:
        return None
    value = severity.upper()
    if value not in SEVERITIES:
        raise ConfigError([("severity", f"expected one of {', '.join(SEVERITIES)}")])
    return value


def _common(since: str | None, severity: str | None) -> list[str]:
    out = []
    if since:
        out.append(f'timestamp>="{since}"')
    if severity:
        out.append(f"severity>={severity}")
    return out


def filters(cfg, *, since: str | None = None, severity: str | None = None, audit: bool = False,
            caller: str | None = None) -> list[str]:
    """The Cloud Logging filters to read (each an AND of clauses). `caller`: only the server's
    request lines naming that verified caller (server/caller.py), e.g. who deleted what."""
    tail = _common(since, severity)
    if caller:
        email = caller.split(":", 1)[-1].strip().lower().replace('"', "")
        return [" AND ".join(['resource.type="cloud_run_revision"',
                              f'resource.labels.service_name="{cfg.service.name}"',
                              f'jsonPayload.caller="{email}"', *tail])]
    if audit:
        log_name = f'logName="projects/{cfg.project}/logs/{AUDIT_LOG}"'
        names = [
            f"services/{cfg.service.name}",
            f"jobs/{cfg.migrate_job_name}",
            f"instances/{cfg.database.instance}",
            f"buckets/{cfg.bucket_name}",
            f"secrets/{cfg.secret_id}",
            f"serviceAccounts/{cfg.server_service_account_email}",
        ]
        return [" AND ".join([log_name, f'protoPayload.resourceName:"{n}"', *tail]) for n in names]
    # Audit entries share the resource type and labels; they have their own view (--audit).
    not_audit = 'NOT logName:"cloudaudit.googleapis.com"'
    return [
        " AND ".join(['resource.type="cloud_run_revision"',
                      f'resource.labels.service_name="{cfg.service.name}"', not_audit, *tail]),
        " AND ".join(['resource.type="cloud_run_job"',
                      f'resource.labels.job_name="{cfg.migrate_job_name}"', not_audit, *tail]),
    ]


def read(clients, log_filters: Iterable[str], limit: int) -> list[dict]:
    """The newest `limit` entries over all filters, oldest first, without duplicates."""
    seen: dict[str, dict] = {}
    for f in log_filters:
        for e in glog.list_entries(clients, f, limit=limit):
            seen.setdefault(_key(e), e)
    newest = sorted(seen.values(), key=lambda e: e.get("timestamp", ""), reverse=True)[:limit]
    return list(reversed(newest))


def _key(entry: dict) -> str:
    return f"{entry.get('logName')}|{entry.get('insertId')}|{entry.get('timestamp')}"


def _source(entry: dict) -> str:
    labels = (entry.get("resource") or {}).get("labels") or {}
    entry_labels = entry.get("labels") or {}
    return (labels.get("revision_name") or entry_labels.get("run.googleapis.com/execution_name")
            or labels.get("job_name") or labels.get("service_name") or (entry.get("resource") or {}).get("type") or "-")


def message(entry: dict) -> str:
    """The readable text of an entry, whatever its payload kind."""
    if entry.get("textPayload") is not None:
        text = str(entry["textPayload"])
    elif entry.get("jsonPayload") is not None:
        payload = entry["jsonPayload"]
        text = str(payload.get("message") or payload.get("msg") or json.dumps(payload, sort_keys=True))
    elif entry.get("protoPayload") is not None:
        p = entry["protoPayload"]
        who = (p.get("authenticationInfo") or {}).get("principalEmail", "?")
        status = p.get("status") or {}
        outcome = f" FAILED: {status.get('message', status.get('code'))}" if status.get("code") else ""
        text = f"{who} {p.get('methodName', '?')} {p.get('resourceName', '')}{outcome}"
    else:
        text = ""
    req = entry.get("httpRequest")
    if req:
        text = (f"{req.get('requestMethod', '')} {req.get('status', '')} {req.get('latency', '')} "
                f"{req.get('requestUrl', '')} {text}").strip()
    return " ".join(text.split())  # one line per entry, always


def line(entry: dict) -> str:
    ts = entry.get("timestamp", "")
    return f"{ts[:19].replace('T', ' ')} {entry.get('severity', 'DEFAULT'):<8} {_source(entry)}  {message(entry)}"


def follow(clients, cfg, *, since: str | None, severity: str | None, audit: bool, limit: int,
           emit: Callable[[dict], None], sleep: Callable[[float], None], polls: int | None = None,
           caller: str | None = None) -> None:
    """Print what exists, then poll for newer entries until interrupted (or `polls` rounds)."""
    seen: set[str] = set()
    last = since
    rounds = 0
    while True:
        for entry in read(clients, filters(cfg, since=last, severity=severity, audit=audit, caller=caller), limit):
            key = _key(entry)
            if key in seen:
                continue
            seen.add(key)
            emit(entry)
            last = max(last or "", entry.get("timestamp", ""))
        rounds += 1
        if polls is not None and rounds >= polls:
            return
        sleep(FOLLOW_INTERVAL_SECONDS)
