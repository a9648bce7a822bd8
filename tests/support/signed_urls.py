"""What Cloud Storage checks on a V4 signed URL request, for stand-ins in front of an emulator.

gcp-storage-emulator ignores signatures: a part PUT with a wrong or missing signature is stored
all the same. `verify_v4` rebuilds the canonical request and string to sign from the request as
received (Cloud Storage's documented V4 process: method, percent-encoded path, sorted canonical
query without X-Goog-Signature, the signed headers, UNSIGNED-PAYLOAD) and checks the signature
with the signing account's public key, the time window and the algorithm.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.parse
from collections.abc import Callable, Mapping

ALGORITHM = "GOOG4-RSA-SHA256"
XML_ERROR = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SignatureDoesNotMatch</Code>"
    b"<Message>The request signature we calculated does not match the signature you provided."
    b"</Message></Error>"
)


class Refused(Exception):
    """The request would get 400/403 from Cloud Storage; the message says why."""


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


def verify_v4(method: str, path: str, query: str, headers: Mapping[str, str],
              public_key_for: Callable[[str], object], now: dt.datetime | None = None) -> str:
    """Check a V4-signed request; returns the signing account's email or raises Refused.

    `path` and `query` as they came on the request line (still percent-encoded); `headers` the
    request's headers (names in any case); `public_key_for(email)` the account's RSA public key.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    signature = params.pop("X-Goog-Signature", None)
    if not signature:
        raise Refused("not signed")
    try:
        algorithm, credential = params["X-Goog-Algorithm"], params["X-Goog-Credential"]
        stamp, expires = params["X-Goog-Date"], int(params["X-Goog-Expires"])
        signed_headers = params["X-Goog-SignedHeaders"]
        start = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except (KeyError, ValueError) as err:
        raise Refused(f"malformed signed URL: {err}") from None
    if algorithm != ALGORITHM:
        raise Refused(f"algorithm {algorithm}")
    email, _, scope = credential.partition("/")
    if not scope.startswith(stamp[:8] + "/") or not scope.endswith("/storage/goog4_request"):
        raise Refused(f"credential scope {scope!r} does not match the date {stamp}")
    now = now or dt.datetime.now(dt.timezone.utc)
    if not start - dt.timedelta(minutes=15) <= now < start + dt.timedelta(seconds=expires):
        raise Refused("expired or not yet valid")
    lower = {name.lower(): value for name, value in headers.items()}
    names = signed_headers.split(";")
    if "host" not in names or any(name not in lower for name in names):
        raise Refused(f"signed headers {signed_headers!r} are not all on the request")
    canonical_request = "\n".join([
        method,
        path,
        "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(params.items())),
        "".join(f"{name}:{' '.join(lower[name].split())}\n" for name in names),
        signed_headers,
        "UNSIGNED-PAYLOAD",
    ])
    string_to_sign = "\n".join(
        [ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    try:
        public_key_for(email).verify(bytes.fromhex(signature), string_to_sign.encode(),
                                     padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError) as err:
        raise Refused(f"signature does not match ({type(err).__name__})") from None
    return email
