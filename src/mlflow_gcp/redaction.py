"""Passwords out of text: URIs' user:pw@ and ?password=, and env-style secrets in API bodies.

Standard library only: the server (its logs), the client and the plan output (a replaced
service's DB_URI) all use it.
"""

from __future__ import annotations

import re
from typing import Any

_PASSWORD_IN_URI_RE = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^@\s]*)@", re.IGNORECASE)
_PASSWORD_IN_QUERY_RE = re.compile(r"(?P<pre>[?&]password=)(?P<pw>[^&\s]*)", re.IGNORECASE)
# Env var names whose plain value is a secret (the old scripts put DB passwords in plain env).
_SECRET_NAME_RE = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|_KEY$", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every password in a URI (user:pw@ or ?password=) replaced by ***."""
    text = _PASSWORD_IN_URI_RE.sub(lambda m: m.group("pre") + "***@", text)
    return _PASSWORD_IN_QUERY_RE.sub(lambda m: m.group("pre") + "***", text)


def secret_name(name: str) -> bool:
    return bool(_SECRET_NAME_RE.search(name or ""))


def redact_value(value: Any, name: str = "") -> Any:
    """A JSON-like value with URI passwords redacted and the values of secret-named env items
    (`{"name": "DB_PASSWORD", "value": ...}`, or a field path ending in such a name) masked."""
    if isinstance(value, str):
        return "***" if secret_name(name) and value else redact(value)
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, dict):
        masked = secret_name(str(value.get("name", "")))
        return {k: ("***" if masked and k == "value" and v else redact_value(v, k)) for k, v in value.items()}
    return value
