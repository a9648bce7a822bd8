"""Who is calling: the caller's Google ID token, verified by this server itself.

Why the server verifies, although Cloud Run already did: Cloud Run checks the token it consumes
and then removes that token's signature before passing it to the container (Google's
service-to-service page), so what reaches us in that header proves nothing, and any header a
client sets could be forged by anyone holding the invoker role. The client therefore sends the
same token twice (client/auth.py): in `X-Serverless-Authorization`, which Cloud Run checks when
present, and in `Authorization`, which Cloud Run then passes on untouched. Here we check the
signed one ourselves: RS256 by one of Google's published keys, issuer accounts.google.com,
audience one of the service's URLs, not expired, a verified email.

Fast because it runs on every request, the metric fast path included: keys are fetched once and
kept for their Cache-Control max-age (refetched early only for an unknown key id, at most every
`REFETCH_SECONDS`), and a verified token is remembered until it expires, so the usual request
costs one dict lookup.

Settings (environment, read once per worker):
  IDENTITY_AUDIENCES   comma list of accepted audiences (the service URLs); set -> identity on
  IDENTITY_CERTS_URL   Google's JWKS (default), or a local identity stand-in's
  IDENTITY_DEV_HEADER  local mode only: `1` accepts `X-Mlflow-Gcp-Dev-User: EMAIL` without a token,
                       and a request naming nobody is IDENTITY_DEV_USER (the browser's user);
                       refused on Cloud Run (K_SERVICE set)
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_ISSUERS = frozenset(("accounts.google.com", "https://accounts.google.com"))
# `gcloud auth print-identity-token` for a user account cannot choose the audience: the token's
# audience is gcloud's own OAuth client, and Cloud Run accepts it from an invoker (docs/client.md).
GCLOUD_CLIENT_ID = "32555940559.apps.googleusercontent.com"

AUDIENCES_ENV = "IDENTITY_AUDIENCES"
CERTS_URL_ENV = "IDENTITY_CERTS_URL"
DEV_HEADER_ENV = "IDENTITY_DEV_HEADER"
DEV_USER_ENV = "IDENTITY_DEV_USER"
DEV_HEADER = "x-mlflow-gcp-dev-user"

# Clock skew allowed between Google and this instance.
LEEWAY_SECONDS = 30
# Google rotates its keys every few days and publishes the new one ahead; a token signed by a key
# we have not seen makes us refetch, but not more often than this (a flood of forged kids).
REFETCH_SECONDS = 30
DEFAULT_KEYS_MAX_AGE = 3600
FETCH_TIMEOUT = 10
# Verified tokens remembered per worker; each client holds one token an hour, so this is plenty.
MAX_CACHED_TOKENS = 10_000


class InvalidToken(Exception):
    """The token is not a valid Google ID token for this service; the message says why."""


@dataclass(frozen=True)
class Caller:
    email: str
    expires: float
    dev: bool = False  # named by the local-mode dev header, not a token


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _max_age(cache_control: str | None) -> int:
    for part in (cache_control or "").split(","):
        name, _, value = part.strip().partition("=")
        if name == "max-age" and value.isdigit():
            return int(value)
    return DEFAULT_KEYS_MAX_AGE


class KeySet:
    """Google's public keys by key id, fetched from a JWKS URL and kept for their max-age."""

    def __init__(self, url: str, clock: Callable[[], float] = time.time):
        self.url = url
        self.clock = clock
        self._keys: dict = {}
        self._expires = 0.0
        self._fetched = float("-inf")
        self._lock = threading.Lock()
        self.fetches = 0

    def _fetch(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        with urllib.request.urlopen(self.url, timeout=FETCH_TIMEOUT) as resp:
            doc = json.loads(resp.read())
            max_age = _max_age(resp.headers.get("Cache-Control"))
        keys = {}
        for jwk in doc.get("keys", []):
            if jwk.get("kty") == "RSA" and jwk.get("kid"):
                numbers = rsa.RSAPublicNumbers(int.from_bytes(_b64(jwk["e"]), "big"),
                                               int.from_bytes(_b64(jwk["n"]), "big"))
                keys[jwk["kid"]] = numbers.public_key()
        now = self.clock()
        self._keys, self._expires, self._fetched = keys, now + max_age, now
        self.fetches += 1

    def get(self, kid: str):
        with self._lock:
            now = self.clock()
            stale = now >= self._expires
            unknown = kid not in self._keys and now - self._fetched >= REFETCH_SECONDS
            if stale or unknown:
                try:
                    self._fetch()
                except (OSError, ValueError) as err:
                    if not self._keys:
                        raise InvalidToken(f"cannot fetch Google's signing keys: {err}") from err
            return self._keys.get(kid)


class Verifier:
    def __init__(self, audiences: Iterable[str], keys: KeySet, clock: Callable[[], float] = time.time):
        self.audiences = frozenset(a.rstrip("/") for a in audiences if a)
        self.keys = keys
        self.clock = clock
        self._verified: dict[str, Caller] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> Caller:
        now = self.clock()
        cached = self._verified.get(token)
        if cached is not None and cached.expires > now - LEEWAY_SECONDS:
            return cached
        caller = self._check(token, now)
        with self._lock:
            if len(self._verified) >= MAX_CACHED_TOKENS:
                self._verified = {t: c for t, c in self._verified.items() if c.expires > now}
                if len(self._verified) >= MAX_CACHED_TOKENS:
                    self._verified.clear()
            self._verified[token] = caller
        return caller

    def _check(self, token: str, now: float) -> Caller:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            header_b64, claims_b64, signature_b64 = token.split(".")
            header, claims = json.loads(_b64(header_b64)), json.loads(_b64(claims_b64))
            signature = _b64(signature_b64)
        except (ValueError, TypeError) as err:
            raise InvalidToken("malformed token") from err
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise InvalidToken("malformed token")
        if header.get("alg") != "RS256":
            raise InvalidToken(f"algorithm {header.get('alg')!r} is not RS256")
        if not signature:
            raise InvalidToken("the token has no signature")
        key = self.keys.get(str(header.get("kid", "")))
        if key is None:
            raise InvalidToken("signed by a key Google does not publish")
        try:
            key.verify(signature, f"{header_b64}.{claims_b64}".encode("ascii"),
                       padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError) as err:
            raise InvalidToken("bad signature") from err
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise InvalidToken(f"issuer {claims.get('iss')!r} is not Google")
        aud = claims.get("aud")
        if not isinstance(aud, str) or aud.rstrip("/") not in self.audiences:
            raise InvalidToken(f"audience {aud!r} is not this service")
        exp, iat = claims.get("exp"), claims.get("iat", 0)
        if not isinstance(exp, (int, float)) or exp + LEEWAY_SECONDS <= now:
            raise InvalidToken("token expired")
        if isinstance(iat, (int, float)) and iat - LEEWAY_SECONDS > now:
            raise InvalidToken("token issued in the future")
        email = claims.get("email")
        if not isinstance(email, str) or not email or claims.get("email_verified") is not True:
            raise InvalidToken("the token carries no verified email (ask for an ID token with email)")
        return Caller(email=email.lower(), expires=float(exp))


def _bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


class Identity:
    """The caller of a request, from its headers; None when identity is off."""

    def __init__(self, verifier: Verifier, dev_header: bool = False, dev_user: str | None = None):
        self.verifier = verifier
        self.dev_header = dev_header
        self.dev_user = dev_user.strip().lower() if dev_header and dev_user else None

    def caller(self, get_header: Callable[[str], str | None]) -> Caller:
        """The verified caller; InvalidToken when no header carries a valid token.

        `Authorization` first (Cloud Run passes it untouched when the token it checks came in
        X-Serverless-Authorization), then `X-Serverless-Authorization` (a direct, unproxied call
        keeps its signature; behind Cloud Run it has none and fails)."""
        problems = []
        for name in ("authorization", "x-serverless-authorization"):
            token = _bearer(get_header(name))
            if token is None:
                continue
            try:
                return self.verifier.verify(token)
            except InvalidToken as err:
                problems.append(f"{name}: {err}")
        if self.dev_header and not problems:
            if dev := (get_header(DEV_HEADER) or "").strip().lower() or self.dev_user:
                return Caller(email=dev, expires=float("inf"), dev=True)
        raise InvalidToken("; ".join(problems) or "no Google ID token (Authorization: Bearer ...)")


_identity: Identity | None = None
_loaded = False
_load_lock = threading.Lock()


def from_env(env=os.environ) -> Identity | None:
    audiences = [a.strip() for a in env.get(AUDIENCES_ENV, "").split(",") if a.strip()]
    dev = env.get(DEV_HEADER_ENV, "").strip() == "1"
    if not audiences and not dev:
        return None
    if dev and env.get("K_SERVICE"):  # Cloud Run sets K_SERVICE in every service container
        raise RuntimeError(f"{DEV_HEADER_ENV}=1 is for local mode only; a deployed server "
                           "takes identities from Google ID tokens alone")
    keys = KeySet(env.get(CERTS_URL_ENV, "").strip() or GOOGLE_CERTS_URL)
    return Identity(Verifier(audiences, keys), dev_header=dev, dev_user=env.get(DEV_USER_ENV))


def current() -> Identity | None:
    """This worker's Identity from the environment (None: identity off)."""
    global _identity, _loaded
    if not _loaded:
        with _load_lock:
            if not _loaded:
                _identity, _loaded = from_env(), True
    return _identity


def flask_caller() -> str | None:
    """The verified email of the Flask request being handled (None: identity off)."""
    ident = current()
    if ident is None:
        return None
    from flask import request

    try:
        return ident.caller(request.headers.get).email
    except InvalidToken:
        return None
