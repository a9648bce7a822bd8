"""RS256 JSON Web Tokens with `cryptography` only, so tests check signatures independently of
google-auth (the library under test mints and reads them on the client side)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class InvalidToken(Exception):
    """The token is malformed, unsigned by a known key, or uses another algorithm."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(payload: Mapping[str, Any], key: rsa.RSAPrivateKey, kid: str) -> str:
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
    )
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def decode_unverified(token: str) -> tuple[dict, dict]:
    try:
        header_b64, payload_b64, _ = token.split(".")
        return json.loads(b64url_decode(header_b64)), json.loads(b64url_decode(payload_b64))
    except (ValueError, TypeError) as err:
        raise InvalidToken(f"malformed token: {err}") from err


def verify(token: str, public_keys: Mapping[str, rsa.RSAPublicKey]) -> dict:
    """Check the RS256 signature against the key named by `kid`; return the claims unchecked."""
    header, payload = decode_unverified(token)
    if header.get("alg") != "RS256":
        raise InvalidToken(f"unexpected algorithm {header.get('alg')!r}")
    key = public_keys.get(header.get("kid", ""))
    if key is None:
        raise InvalidToken("signed by an unknown key")
    signing_input, _, signature = token.rpartition(".")
    try:
        key.verify(b64url_decode(signature), signing_input.encode("ascii"), padding.PKCS1v15(),
                   hashes.SHA256())
    except (InvalidSignature, ValueError) as err:
        raise InvalidToken("bad signature") from err
    return payload
