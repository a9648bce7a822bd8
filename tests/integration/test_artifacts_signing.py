"""Upload URL signing as Cloud Run does it: IAM signBlob as the server's own account (no key).

The signBlob endpoint is a local stand-in holding the account's key (the Google API boundary);
the URL is built by google-cloud-storage's real V4 signer.
"""

from __future__ import annotations

import base64
import json
import urllib.parse

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2.credentials import Credentials as TokenCredentials
from mlflow.exceptions import MlflowException

from mlflow_gcp.server import artifacts_gcs
from tests.support.httpserver import BackgroundServer, QuietHandler
from tests.support.idp import LocalIdentityProvider, new_rsa_key

ACCOUNT = "mlflow-server@test-project.iam.gserviceaccount.com"
TOKEN = "server-access-token"


class SignBlobStandIn(BackgroundServer):
    def __init__(self):
        self.key = new_rsa_key()
        self.payloads: list[bytes] = []
        self.status = 200

    class handler_class(QuietHandler):
        def do_POST(self):
            iam: SignBlobStandIn = self.server.owner
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            expected = f"/v1/projects/-/serviceAccounts/{ACCOUNT}:signBlob"
            if iam.status != 200 or self.path != expected or self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.send_body(iam.status if iam.status != 200 else 403, b'{"error": {}}', "application/json")
            payload = base64.b64decode(body["payload"])
            iam.payloads.append(payload)
            signature = iam.key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
            reply = {"keyId": "k1", "signedBlob": base64.b64encode(signature).decode()}
            self.send_body(200, json.dumps(reply).encode(), "application/json")


@pytest.fixture
def iam():
    with SignBlobStandIn() as stand_in:
        yield stand_in


def _blob():
    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    return client.bucket("bkt").blob("mlflow-gcp-uploads/0123/part-00001")


def test_signblob_signs_a_v4_put_url_as_the_server_account(iam):
    signing = artifacts_gcs._as_signing(artifacts_gcs.IamSigner(TokenCredentials(TOKEN), ACCOUNT, iam.url))
    url = _blob().generate_signed_url(
        version="v4", method="PUT", expiration=artifacts_gcs.URL_LIFETIME, credentials=signing,
        api_access_endpoint="https://storage.googleapis.com",
    )
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Goog-Credential"][0].startswith(ACCOUNT + "/")
    assert query["X-Goog-Expires"] == [str(6 * 3600)]
    (payload,) = iam.payloads
    assert payload.startswith(b"GOOG4-RSA-SHA256\n")
    # The URL carries the signature IAM made over the string to sign: GCS would accept it.
    iam.key.public_key().verify(bytes.fromhex(query["X-Goog-Signature"][0]), payload,
                                padding.PKCS1v15(), hashes.SHA256())


def test_a_refused_signblob_names_the_missing_role(iam):
    iam.status = 403
    signer = artifacts_gcs.IamSigner(TokenCredentials(TOKEN), ACCOUNT, iam.url)
    with pytest.raises(MlflowException, match="serviceAccountTokenCreator") as refused:
        signer.sign_bytes(b"x")
    # Answered 403, which MLflow clients show at once; a 500 they would retry and then hide.
    assert refused.value.get_http_status_code() == 403
    iam.status = 503
    with pytest.raises(MlflowException, match=r"failed \(503\)") as unavailable:
        signer.sign_bytes(b"x")
    assert unavailable.value.get_http_status_code() == 503


def test_a_key_signs_locally_and_keyless_credentials_go_through_signblob(tmp_path, monkeypatch, iam):
    with LocalIdentityProvider() as idp:
        key = idp.write_key_file(tmp_path / "key.json", ACCOUNT)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.delenv(artifacts_gcs.SIGNER_EMAIL_ENV, raising=False)
    assert artifacts_gcs.signing_credentials().signer_email == ACCOUNT  # the key's own signer

    # Keyless user-style credentials (like Cloud Run's token-only ones): signBlob as the named account.
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s",
                                "refresh_token": "r"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user))
    monkeypatch.setenv(artifacts_gcs.SIGNER_EMAIL_ENV, ACCOUNT)
    monkeypatch.setenv(artifacts_gcs.IAM_ENDPOINT_ENV, iam.url)
    signing = artifacts_gcs.signing_credentials()
    assert signing.signer_email == ACCOUNT
    assert isinstance(signing.signer, artifacts_gcs.IamSigner)
    assert signing.signer.endpoint == iam.url


@pytest.mark.parametrize("bad", ["../../mlflow", "", "0123", "A" * 32, "0" * 31 + "/"])
def test_upload_ids_other_than_ours_are_refused(bad):
    with pytest.raises(MlflowException, match="upload_id"):
        artifacts_gcs.check_upload_id(bad)


def test_the_bucket_lifecycle_clears_the_prefix_parts_are_written_under():
    from mlflow_gcp.plan import desired

    assert desired.UPLOAD_PARTS_PREFIX == artifacts_gcs.UPLOADS_PREFIX
    # The build staging prefix is the bucket's too: the artifact API refuses both.
    assert desired.BUILD_PREFIX in artifacts_gcs.RESERVED_PREFIXES
