"""Passwords out of text: URIs' user:pw@ and ?password=, libpq's password=, and env-style
secrets in API bodies (tests/unit/test_redact_properties.py).

Standard library only: the server (its logs), the client and the plan output (a replaced
service's DB_URI) all use it.
"""

from __future__ import annotations

import re
from typing import Any

# The user-info password runs to the LAST "@" that a host (or "/", for a socket path) follows, so
# a hand-written password with an unencoded "@" or spaces is covered whole; on a line that holds
# more after the URI, more than the password may go, never less.
_PASSWORD_IN_URI_RE = re.compile(
    r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^\n]*)@(?=[A-Za-z0-9.%_\[\]:-]*(?:[/?#\s'\"),;]|$))",
    re.IGNORECASE,
)
# A URI's query (?password=...&) ends at "&"; libpq's key=value (`password='a b'`, quoted when it
# holds spaces), DB_PASSWORD= and MLflow's MLFLOW_CRYPTO_KEK_PASSPHRASE= end at ASCII blanks.
_PASSWORD_IN_QUERY_RE = re.compile(r"(?P<pre>[?&](?:password|passphrase)=)(?P<pw>[^&#\s]*)", re.IGNORECASE)
_PASSWORD_KV_RE = re.compile(
    r"(?P<pre>(?<![A-Za-z0-9?&])(?:password|passwd|passphrase)[ \t]*=[ \t]*)(?P<pw>'(?:[^'\\]|\\.)*'?|[^ \t\r\n\f\v]+)",
    re.IGNORECASE,
)
# Env var names whose plain value is a secret (the old scripts put DB passwords in plain env).
_SECRET_NAME_RE = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|_KEY$", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every password in a URI (user:pw@) or a key=value string (?password=, libpq's
    password=, ..._PASSPHRASE=) replaced by ***."""
    text = _PASSWORD_IN_URI_RE.sub(lambda m: m.group("pre") + "***@", text)
    text = _PASSWORD_IN_QUERY_RE.sub(lambda m: m.group("pre") + "***", text)
    return _PASSWORD_KV_RE.sub(lambda m: m.group("pre") + "***", text)


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
