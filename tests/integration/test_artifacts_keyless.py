"""Proxied uploads over Cloud Run's 32 MiB cap with keyless server credentials, end to end.

The server has what Cloud Run gives it: metadata-server credentials (access tokens only, no
private key; the metadata stand-in of tests/support/idp.py), MLFLOW_GCP_SIGNER_EMAIL set as `up`
sets it, and MLFLOW_GCP_IAM_ENDPOINT pointing at tests/fakegcp's IAM Credentials API, whose
signBlob signs with a key of its own per account. Part PUTs go through a hop that checks every V4
signature as Cloud Storage does (the GCS emulator itself accepts anything) before the emulator.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2.credentials import Credentials as TokenCredentials

from mlflow_gcp.server import artifacts_gcs
from tests.fakegcp import FakeGcp
from tests.integration.artifacts_support import CLIENT_SCRIPT, FaultyHop, MiB
from tests.support import signed_urls
from tests.support.clientenv import clean_env
from tests.support.cloudrun_front import CloudRunFront
from tests.support.idp import LocalIdentityProvider

pytestmark = pytest.mark.slow

FRONT_HOST = "mlflow-keyless-7x2kq9ab3c-ew.a.run.app"
INVOKER = "trainer@test-project.iam.gserviceaccount.com"
SERVER_ACCOUNT = "mlflow-server@test-project.iam.gserviceaccount.com"
SIGN_BLOB = "iamcredentials.projects.serviceAccounts.signBlob"


class SignatureCheckingHop(FaultyHop):
    """FaultyHop that answers part PUTs (the XML API path) as Cloud Storage would: 403 unless the
    V4 signature verifies with the signing account's public key."""

    def __init__(self, upstream: str, public_key_for):
        super().__init__(upstream)
        self.public_key_for = public_key_for
        self.verified: list[str] = []  # signer email of each accepted PUT
        self.refused: list[str] = []

    class handler_class(FaultyHop.handler_class):
        def do_PUT(self):
            hop: SignatureCheckingHop = self.server.owner
            url = urllib.parse.urlsplit(self.path)
            if not url.path.startswith("/upload/"):  # JSON API uploads carry a bearer token instead
                try:
                    hop.verified.append(signed_urls.verify_v4(
                        "PUT", url.path, url.query, dict(self.headers.items()), hop.public_key_for))
                except signed_urls.Refused as err:
                    hop.refused.append(str(err))
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    return self.send_body(403, signed_urls.XML_ERROR, "application/xml")
            self._forward()


@pytest.fixture(scope="module")
def fake():
    with FakeGcp() as fake:
        yield fake


@pytest.fixture(scope="module")
def keyless(fake, start_server, new_database, gcs_emulator, tmp_path_factory):
    base = tmp_path_factory.mktemp("keyless")
    account = json.dumps({"accountId": SERVER_ACCOUNT.split("@")[0]}).encode()
    urllib.request.urlopen(urllib.request.Request(
        f"{fake.url}/iam/v1/projects/test-project/serviceAccounts", data=account,
        headers={"Content-Type": "application/json"}, method="POST"), timeout=10).close()
    iam = fake.api("iamcredentials")
    with LocalIdentityProvider(metadata_email=SERVER_ACCOUNT) as idp, \
            SignatureCheckingHop(gcs_emulator.host, iam.public_key) as hop:
        bucket = gcs_emulator.new_bucket("keyless")
        metadata = idp.url[len("http://"):]
        server = start_server({
            "DB_URI": new_database("mlflow_gcp_keyless"),
            "ARTIFACT_ROOT": f"gs://{bucket}/mlflow",
            "ARTIFACT_MODE": "proxied",
            "STORAGE_EMULATOR_HOST": hop.url,
            # On "Google Cloud": no key file, credentials come from the metadata stand-in.
            "GOOGLE_APPLICATION_CREDENTIALS": "",
            "NO_GCE_CHECK": "false",
            "GCE_METADATA_HOST": metadata,
            "GCE_METADATA_IP": metadata,
            "MLFLOW_GCP_SIGNER_EMAIL": SERVER_ACCOUNT,
            "MLFLOW_GCP_IAM_ENDPOINT": f"{fake.url}/iamcredentials",
            "ALLOWED_HOSTS": FRONT_HOST,
            "WORKERS": "1",
            "DB_CONNECTIONS": "4",
        })
        with CloudRunFront(server.url, certs=idp.certs, host=FRONT_HOST,
                           allowed_invokers=[f"serviceAccount:{INVOKER}"]) as front:
            key_file = idp.write_key_file(base / "invoker.json", INVOKER)
            yield {"fake": fake, "idp": idp, "hop": hop, "front": front, "bucket": bucket,
                   "key": key_file, "server": server}
        server.stop()


def run_client(keyless, tmp_path, spec: dict[str, int]) -> list[dict]:
    workdir = tmp_path / f"client-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, f"keyless-{uuid.uuid4().hex[:8]}", str(workdir),
         json.dumps([{"name": n, "size": s} for n, s in spec.items()])],
        env=clean_env(MLFLOW_TRACKING_URI=keyless["front"].url, MLFLOW_TRACKING_AUTH="gcp",
                      MLFLOW_GCP_CREDENTIALS_FILE=str(keyless["key"]),
                      MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", TMPDIR=str(workdir)),
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def objects(bucket: str) -> list[str]:
    return sorted(b.name for b in storage.Client().bucket(bucket).list_blobs())


def sign_blob_calls(fake) -> list:
    return [r for r in fake.requests if r.method_id == SIGN_BLOB]


def test_over_the_cap_with_signblob_signed_parts(keyless, tmp_path):
    fake, hop = keyless["fake"], keyless["hop"]
    fake.clear_log()
    (result,) = run_client(keyless, tmp_path, {"keyless.bin": 41 * MiB})
    assert result["logged"], f"{result.get('error')}\n{keyless['server'].output()[-3000:]}"
    assert result["equal"]  # downloaded back through the front, sha256 equal
    parts = 5  # MLflow's 10 MiB parts
    calls = sign_blob_calls(fake)
    assert len(calls) == parts and all(c.status == 200 for c in calls)
    assert all(c.path == f"v1/projects/-/serviceAccounts/{SERVER_ACCOUNT}:signBlob" for c in calls)
    # Every part went straight to the bucket under a signature GCS would accept, made by signBlob
    # with a token from the metadata server (the server has no key to sign with).
    assert hop.verified == [SERVER_ACCOUNT] * parts and hop.refused == []
    assert keyless["idp"].access_tokens
    assert keyless["front"].count(413) == 0
    names = objects(keyless["bucket"])
    assert [n for n in names if n.endswith("/data/keyless.bin")] and not [
        n for n in names if n.startswith(artifacts_gcs.UPLOADS_PREFIX)]


def test_a_refused_signblob_fails_the_upload_with_the_missing_role(keyless, tmp_path):
    fake = keyless["fake"]
    fake.deny_permission("iam.serviceAccounts.signBlob", method_id=SIGN_BLOB)
    try:
        (result,) = run_client(keyless, tmp_path, {"refused.bin": 33 * MiB})
    finally:
        fake.clear_faults()
    assert not result["logged"]
    assert "roles/iam.serviceAccountTokenCreator" in result["error"], result["error"]
    assert f"signBlob as {SERVER_ACCOUNT} failed (403)" in result["error"]
    assert not [n for n in objects(keyless["bucket"]) if "refused.bin" in n or n.startswith(artifacts_gcs.UPLOADS_PREFIX)]


def test_the_checking_hop_refuses_what_gcs_would_refuse(fake):
    """verify_v4 is not a rubber stamp: a signBlob-signed URL passes, any change to it fails."""
    urllib.request.urlopen(urllib.request.Request(
        f"{fake.url}/iam/v1/projects/test-project/serviceAccounts",
        data=json.dumps({"accountId": "signer-check"}).encode(),
        headers={"Content-Type": "application/json"}, method="POST"), timeout=10).close()
    email = "signer-check@test-project.iam.gserviceaccount.com"
    signing = artifacts_gcs._as_signing(artifacts_gcs.IamSigner(
        TokenCredentials("token"), email, f"{fake.url}/iamcredentials"))
    blob = storage.Client(project="p", credentials=AnonymousCredentials()).bucket("bkt").blob(
        "mlflow-gcp-uploads/0123/part-00001")
    url = urllib.parse.urlsplit(blob.generate_signed_url(
        version="v4", method="PUT", expiration=artifacts_gcs.URL_LIFETIME, credentials=signing,
        api_access_endpoint="http://127.0.0.1:9"))
    host = {"Host": "127.0.0.1:9"}
    key = fake.api("iamcredentials").public_key

    assert signed_urls.verify_v4("PUT", url.path, url.query, host, key) == email
    refusals = {
        "another method": ("GET", url.path, url.query, host),
        "another object": ("PUT", url.path.replace("part-00001", "part-00002"), url.query, host),
        "another host": ("PUT", url.path, url.query, {"Host": "127.0.0.1:10"}),
        "a longer life": ("PUT", url.path, url.query.replace("X-Goog-Expires=21600", "X-Goog-Expires=99999"), host),
        "no signature": ("PUT", url.path, url.query.split("&X-Goog-Signature=")[0], host),
    }
    for what, args in refusals.items():
        try:
            signed_urls.verify_v4(*args, key)
        except signed_urls.Refused:
            continue
        pytest.fail(f"a signed URL with {what} was accepted")
    later = dt.datetime.now(dt.timezone.utc) + artifacts_gcs.URL_LIFETIME + dt.timedelta(minutes=1)
    with pytest.raises(signed_urls.Refused, match="expired"):
        signed_urls.verify_v4("PUT", url.path, url.query, host, key, now=later)
