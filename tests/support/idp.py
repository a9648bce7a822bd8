"""A local stand-in for Google's token endpoint and the metadata server's identity endpoint.

google-auth's `service_account.IDTokenCredentials` posts a JWT assertion signed with the key in
the key file to that file's `token_uri` and expects `{"id_token": ...}`; we verify the assertion
with the public half of the key we generated, then mint an ID token signed by our own signing key.
`CloudRunFront` verifies those tokens with `certs`. The metadata endpoints
(`/computeMetadata/v1/instance/service-accounts/default/identity` for ID tokens, `.../token` for
opaque access tokens, which `access_tokens` lists) serve code "on Google Cloud" (jobs, a Cloud Run
server's own keyless credentials):
point google-auth at it with GCE_METADATA_HOST / GCE_METADATA_IP (read when google-auth is
imported, so use a subprocess).

Assertions are signed with google-auth's own (real) clock, so they are checked against the real
time; the ID tokens we mint use the injectable `clock`, which the front shares.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import jwt
from tests.support.httpserver import BackgroundServer, QuietHandler

GOOGLE_ISSUER = "https://accounts.google.com"
# google-auth always addresses its assertion to Google's endpoint, whatever token_uri says.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CERTS_PATH = "/oauth2/v3/certs"


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class LocalIdentityProvider(BackgroundServer):
    """Mints Google-style ID tokens for registered service accounts; counts what it issued."""

    def __init__(self, clock: Callable[[], float] = time.time, lifetime: int = 3600,
                 metadata_email: str = "job-runner@test-project.iam.gserviceaccount.com"):
        self.clock = clock
        self.lifetime = lifetime
        self.metadata_email = metadata_email
        self._signing_key = new_rsa_key()
        self._signing_kid = uuid.uuid4().hex
        self._accounts: dict[str, rsa.RSAPublicKey] = {}  # key id -> service account public key
        self._emails: dict[str, str] = {}  # key id -> email
        self._lock = threading.Lock()
        self.issued: list[dict] = []  # claims of every ID token minted, in order
        self.refused: list[str] = []  # why each refused assertion was refused
        self.access_tokens: list[str] = []  # every metadata access token handed out, in order
        self.certs_served = 0  # JWKS documents served (a verifier should cache them)

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def certs(self) -> dict[str, rsa.RSAPublicKey]:
        """The public keys a verifier trusts, by key id (Google's published certs)."""
        return {self._signing_kid: self._signing_key.public_key()}

    @property
    def certs_url(self) -> str:
        """Google's JWKS endpoint (https://www.googleapis.com/oauth2/v3/certs), served here."""
        return f"{self.url}{CERTS_PATH}"

    def jwks(self) -> dict:
        keys = []
        for kid, key in self.certs.items():
            numbers = key.public_numbers()
            keys.append({
                "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
                "n": jwt.b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                "e": jwt.b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            })
        with self._lock:
            self.certs_served += 1
        return {"keys": keys}

    def issued_count(self) -> int:
        with self._lock:
            return len(self.issued)

    def mint(self, email: str, audience: str, **extra) -> str:
        """An ID token for `email` and `audience`, as Google would sign it."""
        now = int(self.clock())
        claims = {
            "iss": GOOGLE_ISSUER, "aud": audience, "azp": email, "sub": str(abs(hash(email))),
            "email": email, "email_verified": True, "iat": now, "exp": now + self.lifetime,
            **extra,
        }
        with self._lock:
            self.issued.append(claims)
        return jwt.encode(claims, self._signing_key, self._signing_kid)

    def write_key_file(self, path: str | os.PathLike, email: str,
                       project_id: str = "test-project") -> Path:
        """A service-account key JSON that google-auth accepts, whose token_uri is us."""
        key = new_rsa_key()
        kid = uuid.uuid4().hex
        with self._lock:
            self._accounts[kid] = key.public_key()
            self._emails[kid] = email
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        info = {
            "type": "service_account", "project_id": project_id, "private_key_id": kid,
            "private_key": pem, "client_email": email, "client_id": str(abs(hash(email))),
            "auth_uri": f"{self.url}/auth", "token_uri": self.token_uri,
            "universe_domain": "googleapis.com",
        }
        path = Path(path)
        path.write_text(json.dumps(info, indent=2))
        path.chmod(0o600)
        return path

    def _grant(self, form: dict[str, str]) -> tuple[int, dict]:
        if form.get("grant_type") != JWT_GRANT:
            return 400, {"error": "unsupported_grant_type"}
        try:
            claims = jwt.verify(form.get("assertion", ""), self._accounts)
        except jwt.InvalidToken as err:
            self.refused.append(str(err))
            return 400, {"error": "invalid_grant", "error_description": str(err)}
        header, _ = jwt.decode_unverified(form["assertion"])
        problems = []
        if claims.get("iss") != self._emails.get(header.get("kid")):
            problems.append("issuer does not own the signing key")
        if claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, self.token_uri):
            problems.append(f"assertion audience {claims.get('aud')!r}")
        if not claims.get("exp", 0) > time.time():
            problems.append("assertion expired")
        if not claims.get("target_audience"):
            problems.append("no target_audience (an access-token grant, not an ID token one)")
        if problems:
            self.refused.append("; ".join(problems))
            return 400, {"error": "invalid_grant", "error_description": "; ".join(problems)}
        return 200, {"id_token": self.mint(claims["iss"], claims["target_audience"])}

    class handler_class(QuietHandler):
        def do_POST(self) -> None:
            idp: LocalIdentityProvider = self.server.owner
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if urllib.parse.urlsplit(self.path).path != "/token":
                return self.send_body(404, b"not found")
            form = dict(urllib.parse.parse_qsl(body.decode()))
            status, payload = idp._grant(form)
            self.send_body(status, json.dumps(payload).encode(), "application/json")

        def do_GET(self) -> None:
            idp: LocalIdentityProvider = self.server.owner
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            flavor = {"Metadata-Flavor": "Google"}
            if url.path == CERTS_PATH:  # public, like Google's; cached for an hour as Google says
                return self.send_body(200, json.dumps(idp.jwks()).encode(), "application/json",
                                      {"Cache-Control": "public, max-age=3600"})
            if url.path == "/":  # google-auth's "are we on Google Cloud?" ping
                return self.send_body(200, b"", headers=flavor)
            if self.headers.get("Metadata-Flavor") != "Google":
                return self.send_body(403, b"Missing Metadata-Flavor:Google header.")
            # The metadata server answers under the account's email as under "default", and
            # google-auth switches to the email once it has learned it.
            account_root = f"/computeMetadata/v1/instance/service-accounts/{idp.metadata_email}/"
            if url.path.startswith(account_root):
                url = url._replace(path="/computeMetadata/v1/instance/service-accounts/default/"
                                   + url.path[len(account_root):])
            if url.path == "/computeMetadata/v1/instance/service-accounts/default/identity":
                if not query.get("audience"):
                    return self.send_body(400, b"non-empty audience parameter required")
                token = idp.mint(idp.metadata_email, query["audience"])
                return self.send_body(200, token.encode(), "application/text", flavor)
            if url.path == "/computeMetadata/v1/instance/service-accounts/default/token":
                token = f"metadata-access-{uuid.uuid4().hex}"
                with idp._lock:
                    idp.access_tokens.append(token)
                reply = {"access_token": token, "expires_in": idp.lifetime, "token_type": "Bearer"}
                return self.send_body(200, json.dumps(reply).encode(), "application/json", flavor)
            if url.path == "/computeMetadata/v1/instance/service-accounts/default/":
                info = {"aliases": ["default"], "email": idp.metadata_email,
                        "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
                return self.send_body(200, json.dumps(info).encode(), "application/json", flavor)
            if url.path == "/computeMetadata/v1/instance/service-accounts/default/email":
                return self.send_body(200, idp.metadata_email.encode(), "application/text", flavor)
            return self.send_body(404, b"not found", headers=flavor)
