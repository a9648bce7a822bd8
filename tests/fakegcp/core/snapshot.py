"""A comparable picture of the fake's state: what `up` converged to, minus what differs between
two identical runs (timestamps, etags, uids, operation and build ids, digests, secret values).

Two runs that made the same resources with the same settings give equal snapshots, which is how
"an interrupted `up`, rerun, converges to the state of an uninterrupted one" is checked."""

from __future__ import annotations

import re

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
VOLATILE_KEYS = frozenset({"etag", "uid", "md5Hash", "generation_id", "logUrl", "logUri"})


def normalize(value, ignore: frozenset[str] = frozenset()):
    """Drop volatile and private ("_x") keys; mask timestamps, random ids and digests."""
    drop = VOLATILE_KEYS | ignore
    if isinstance(value, dict):
        return {normalize(k, ignore): normalize(v, ignore) for k, v in value.items()
                if not (isinstance(k, str) and (k in drop or k.startswith("_")))}
    if isinstance(value, (list, tuple)):
        return [normalize(v, ignore) for v in value]
    if isinstance(value, str):
        if _TIMESTAMP.fullmatch(value):
            return "<time>"
        value = _DIGEST.sub("sha256:<digest>", value)
        value = _UUID.sub("<id>", value)
        return _HEX_ID.sub("<id>", value)
    return value
