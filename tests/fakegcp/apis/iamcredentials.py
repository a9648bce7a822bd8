"""IAM Service Account Credentials v1: generateIdToken / generateAccessToken / signBlob /
signJwt for service accounts that exist in the fake IAM. Tokens are well-formed but unsigned
placeholders: nothing real can verify them. signBlob signs for real (RSA-SHA256, PKCS#1 v1.5, as
Google does) with a key the fake makes per account, so a V4 signed URL built on it can be checked
against `public_key(email)`, as Cloud Storage checks it against the account's Google-managed key."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json

from ..core.api import ApiModule, Request, handles
from ..core.errors import GcpError, invalid_argument


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class IamCredentials(ApiModule):
    name = "iamcredentials"
    versions = ("v1",)
    service = "iamcredentials.googleapis.com"
    title = "IAM Service Account Credentials API"

    def reset(self) -> None:
        self.state: dict[str, int] = {}  # email -> tokens issued
        self._keys: dict = {}  # email -> RSA private key signBlob signs with

    def _key(self, email: str):
        from cryptography.hazmat.primitives.asymmetric import rsa

        if email not in self._keys:
            self._keys[email] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._keys[email]

    def public_key(self, email: str):
        """The public half of the key signBlob signs with as `email` (Google publishes it)."""
        return self._key(email).public_key()

    def snapshot(self) -> dict:
        return {}

    def _account(self, req: Request, permission: str) -> str:
        email = req.get("name").rsplit("/", 1)[-1]
        if email not in self.fake.modules["iam"].state:
            raise GcpError(403, f"Permission '{permission}' denied on resource (or it may not "
                           "exist).", "PERMISSION_DENIED", "forbidden")
        self.state[email] = self.state.get(email, 0) + 1
        return email

    @handles("iamcredentials.projects.serviceAccounts.generateIdToken")
    def id_token(self, req: Request) -> dict:
        email = self._account(req, "iam.serviceAccounts.getOpenIdToken")
        audience = (req.body or {}).get("audience")
        if not audience:
            raise invalid_argument("audience is required.", field="audience")
        issued = int(dt.datetime.now(dt.timezone.utc).timestamp())
        claims = {"aud": audience, "azp": email, "email": email, "email_verified": True,
                  "exp": issued + 3600, "iat": issued, "iss": "https://accounts.google.com",
                  "sub": str(int(hashlib.sha256(email.encode()).hexdigest(), 16) % 10**21)}
        header = {"alg": "RS256", "kid": "fake", "typ": "JWT"}
        token = ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()),
                          _b64(b"fake-signature")])
        return {"token": token}

    @handles("iamcredentials.projects.serviceAccounts.generateAccessToken")
    def access_token(self, req: Request) -> dict:
        email = self._account(req, "iam.serviceAccounts.getAccessToken")
        if not (req.body or {}).get("scope"):
            raise invalid_argument("scope is required.", field="scope")
        expire = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
        return {"accessToken": f"ya29.fake-{hashlib.sha1(email.encode()).hexdigest()}",
                "expireTime": expire.strftime("%Y-%m-%dT%H:%M:%SZ")}

    @handles("iamcredentials.projects.serviceAccounts.signBlob")
    def sign_blob(self, req: Request) -> dict:
        email = self._account(req, "iam.serviceAccounts.signBlob")
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        payload = base64.b64decode((req.body or {}).get("payload") or "")
        signature = self._key(email).sign(payload, padding.PKCS1v15(), hashes.SHA256())
        return {"keyId": "fake-key", "signedBlob": base64.b64encode(signature).decode()}

    @handles("iamcredentials.projects.serviceAccounts.signJwt")
    def sign_jwt(self, req: Request) -> dict:
        self._account(req, "iam.serviceAccounts.signJwt")
        payload = (req.body or {}).get("payload") or "{}"
        return {"keyId": "fake-key", "signedJwt": ".".join(
            [_b64(b'{"alg":"RS256","typ":"JWT"}'), _b64(payload.encode()), _b64(b"fake-signature")])}
