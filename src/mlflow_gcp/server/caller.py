"""ASGI middleware: every request names its verified caller, or is refused.

With identity on (server/identity.py), each request except /health and /version must carry a
valid Google ID token: without one it gets 401 before MLflow sees it, so a forged header
changes nothing. Then:

- **Attribution.** A new run's `user_id` and `mlflow.user` tag, a `mlflow.user` tag set later
  (set-tag or log-batch) and a new model version's `mlflow.user` tag are the caller's email,
  whatever the client sent (MLflow's client fills them from the OS user). MLflow's model registry stores no user id for a
  version (it writes NULL), hence the tag there.
- **Audit.** Every state-changing request (not GET/HEAD/OPTIONS) leaves one JSON log line naming
  the caller, method, path, status and, for small JSON bodies, the object it named
  (experiment_id, run_id, name, version...): who deleted what.
- The caller is left in the ASGI scope (`CALLER_KEY`) for the fast metric path's permission check.
"""

from __future__ import annotations

import json
import sys

from mlflow_gcp.server import identity
from mlflow_gcp.server.fastpath import replay

CALLER_KEY = "mlflow_gcp.caller"
OPEN_PATHS = ("/health", "/version")
READ_METHODS = ("GET", "HEAD", "OPTIONS")
# Bodies read here (to rewrite or to name the target) only when at most this big.
MAX_BODY = 256 * 1024
# The metric stream (the fast path's): not parsed here unless it names the user tag, and logged
# without a target. Artifact bytes are not read at all.
_STREAMED = ("/runs/log-batch", "/runs/log-metric")
_ARTIFACTS = "/mlflow-artifacts/"
_TARGET_FIELDS = ("experiment_id", "run_id", "run_uuid", "name", "new_name", "version", "key",
                  "alias", "model_id", "trace_id")
USER_TAG = "mlflow.user"
USER_TAG_BYTES = b'"mlflow.user"'


def _attribute(path: str, doc: dict, email: str) -> bool:
    """Put the caller into a request body that records a user; True when changed."""
    if path.endswith("/mlflow/runs/create"):
        doc["user_id"] = email
        doc["tags"] = [t for t in doc.get("tags") or [] if not (isinstance(t, dict) and t.get("key") == USER_TAG)]
        doc["tags"].append({"key": USER_TAG, "value": email})
        return True
    if path.endswith("/mlflow/runs/set-tag") and doc.get("key") == USER_TAG:
        doc["value"] = email
        return True
    if path.endswith("/mlflow/runs/log-batch"):  # mlflow.set_tags() sends its tags here
        tags = [t for t in doc.get("tags") or [] if isinstance(t, dict) and t.get("key") == USER_TAG]
        for tag in tags:
            tag["value"] = email
        return bool(tags)
    if path.endswith("/mlflow/model-versions/create"):
        doc["tags"] = [t for t in doc.get("tags") or [] if not (isinstance(t, dict) and t.get("key") == USER_TAG)]
        doc["tags"].append({"key": USER_TAG, "value": email})
        return True
    return False


def _target(doc) -> dict:
    if not isinstance(doc, dict):
        return {}
    return {k: doc[k] for k in _TARGET_FIELDS if isinstance(doc.get(k), (str, int))}


def audit_line(caller: str, method: str, path: str, status: int, target: dict) -> str:
    what = " ".join(f"{k}={v}" for k, v in target.items())
    return json.dumps({
        "severity": "INFO" if status < 400 else "WARNING",
        "message": f"{method} {path} by {caller} -> {status}" + (f" ({what})" if what else ""),
        "caller": caller, "method": method, "path": path, "status": status, "target": target,
    }, ensure_ascii=False)


class CallerGate:
    def __init__(self, app, ident: identity.Identity, out=None):
        self.app = app
        self.identity = ident
        self.out = out

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]

        def get_header(name: str) -> str | None:
            raw = name.encode()
            for key, value in headers:
                if key == raw:
                    return value.decode("latin-1")
            return None

        try:
            caller = self.identity.caller(get_header)
        except identity.InvalidToken as err:
            await _unauthenticated(send, str(err))
            return
        scope = dict(scope)
        scope[CALLER_KEY] = caller.email
        method, path = scope["method"], scope["path"]
        if method in READ_METHODS:
            await self.app(scope, receive, send)
            return
        target: dict = {}
        streamed = path.endswith(_STREAMED)
        if _ARTIFACTS not in path:
            body, more = await _read(receive, MAX_BODY)
            # The metric stream is parsed only when it names the user tag (a C-speed search).
            if not more and (not streamed or USER_TAG_BYTES in body):
                try:
                    doc = json.loads(body) if body else None
                except ValueError:
                    doc = None
                if isinstance(doc, dict):
                    target = {} if streamed else _target(doc)
                    if _attribute(path, doc, caller.email):
                        body = json.dumps(doc).encode()
                        scope["headers"] = [(k, v) for k, v in headers if k != b"content-length"]
                        scope["headers"].append((b"content-length", str(len(body)).encode()))
            receive = replay(body, more, receive)
        status = 0

        async def send_seen(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            line = audit_line(caller.email, method, path, status or 500, target)
            out = self.out or sys.stderr
            out.write(line + "\n")
            out.flush()


async def _read(receive, limit: int) -> tuple[bytes, bool]:
    chunks, size, more = [], 0, True
    while more and size <= limit:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
    return b"".join(chunks), more


async def _unauthenticated(send, reason: str) -> None:
    body = json.dumps({"error_code": "UNAUTHENTICATED",
                       "message": f"A valid Google ID token is required: {reason}"}).encode()
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b'Bearer error="invalid_token"')]})
    await send({"type": "http.response.body", "body": body})


def wrap(app):
    """`app` behind the gate when identity is configured, else `app` itself."""
    ident = identity.current()
    return app if ident is None else CallerGate(app, ident)
