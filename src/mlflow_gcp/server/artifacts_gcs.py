"""gs:// artifacts of any size through a server behind Cloud Run's 32 MiB request cap.

Registered for the `gs` scheme through MLflow's `mlflow.artifact_repository` entry point, so the
server's proxied artifact store (`--artifacts-destination gs://...`) is this class. It changes
three things of MLflow's GCSArtifactRepository, and nothing a direct-mode client relies on:

- Multipart uploads (`/mlflow-artifacts/mpu/create|complete|abort`, used by MLflow clients with
  MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true) no longer use GCS's XML multipart API (no emulator
  implements it) nor `blob.generate_signed_url` with the default credentials (Cloud Run's keyless
  credentials cannot sign). Each part is its own temporary object under
  `gs://BUCKET/mlflow-gcp-uploads/<upload id>/`, written by the client with a V4 signed PUT URL
  (straight to GCS, never through Cloud Run); `complete` composes the parts into the artifact
  (32 sources per compose call, in a tree) and deletes them; `abort` deletes them.
- Signing: with a service-account key (tests, local use) the key signs; otherwise (Cloud Run) the
  IAM Credentials signBlob API signs as the server's own account, which holds
  roles/iam.serviceAccountTokenCreator on itself. MLFLOW_GCP_SIGNER_EMAIL names the account
  (default: the metadata server's); MLFLOW_GCP_IAM_ENDPOINT points signBlob elsewhere (tests).

Uploads are bound to their destination: `create` writes a small marker object beside the parts
(`<upload id>/upload.json`: the destination and the number of parts); `complete` and `abort`
refuse an upload id whose marker names another destination, and `complete` wants exactly the
parts the upload was created with. One request may ask for at most MAX_PARTS_PER_REQUEST part URLs
(each is a signBlob call on Cloud Run). The uploads prefix and the build staging prefix are the
bucket's, not artifacts: with the artifact root at the bucket's root they would otherwise be
listable, readable and writable through the artifact API, so every path this repository resolves
into them is refused, and listings leave them out (docs/security.md, "Artifact uploads").

Downloads keep MLflow's path (GCS -> temporary file in chunks -> streamed response); see
docs/artifacts.md.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import posixpath
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import warnings

with warnings.catch_warnings():
    # Imported before MLflow's artifact registry, these imports make the registry load our entry
    # point while this module is half-built; it warns, and _register() below makes up for it.
    warnings.filterwarnings("ignore", message='.*artifact repository for scheme "gs"')
    from mlflow.entities.multipart_upload import CreateMultipartUploadResponse, MultipartUploadCredential
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, TEMPORARILY_UNAVAILABLE
    from mlflow.store.artifact.artifact_repo import _is_object_key_within_path
    from mlflow.store.artifact.gcs_artifact_repo import GCSArtifactRepository

# Bucket-level, outside any artifact root, so a lifecycle rule can clear abandoned uploads.
UPLOADS_PREFIX = "mlflow-gcp-uploads/"
# GCS: at most 32 source objects per compose request.
COMPOSE_MAX_SOURCES = 32
# Object prefixes of the bucket that are not artifacts (plan/desired.py BUILD_PREFIX stages
# Cloud Build sources there; a unit test keeps the two equal).
BUILD_PREFIX = "mlflow-gcp-build/"
RESERVED_PREFIXES = (UPLOADS_PREFIX, BUILD_PREFIX)
MARKER = "upload.json"
# Part URLs one create request may ask for: each is a signBlob call on Cloud Run (MLflow's own
# limit, S3's 10,000, was that many calls per request). MLflow's client asks for all parts at
# once, ceil(size / MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE): at its 10 MiB default this serves files
# up to 20 GiB; a larger part size serves more (64 MiB parts: 128 GiB).
MAX_PARTS_PER_REQUEST = 2048
# A 5 GiB artifact at 10 MB/s takes ~9 minutes; leave slow links plenty.
URL_LIFETIME = datetime.timedelta(hours=6)
SIGNING_THREADS = 8
DIRECT_UPLOAD_CHUNK_SIZE = 16 * 1024 * 1024  # a multiple of 256 KiB, as GCS requires
SIGNER_EMAIL_ENV = "MLFLOW_GCP_SIGNER_EMAIL"
IAM_ENDPOINT_ENV = "MLFLOW_GCP_IAM_ENDPOINT"
IAM_ENDPOINT = "https://iamcredentials.googleapis.com"
_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


def _bad_request(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def is_reserved(name: str) -> bool:
    """Whether bucket object `name` (or the folder it names) belongs to mlflow-gcp, not to artifacts."""
    return any(name.startswith(prefix) or name == prefix.rstrip("/") for prefix in RESERVED_PREFIXES)


def _refuse_reserved(name: str) -> str:
    if is_reserved(name):
        raise MlflowException(
            f"{name!r} is not an artifact path: the bucket keeps mlflow-gcp's own objects under "
            f"{' and '.join(RESERVED_PREFIXES)}",
            error_code=PERMISSION_DENIED,
        )
    return name


def part_name(upload_id: str, part_number: int) -> str:
    return f"{UPLOADS_PREFIX}{upload_id}/part-{part_number:05d}"


def check_upload_id(upload_id: str) -> str:
    # The id becomes an object prefix that abort deletes: never let a client choose another one.
    if not isinstance(upload_id, str) or not _UPLOAD_ID_RE.match(upload_id):
        raise _bad_request("upload_id is not one this server issued")
    return upload_id


class IamSigner:
    """Signs with the IAM Credentials signBlob API as `email`, authorised by `credentials`.

    Duck-types google.auth.credentials.Signing's use in google-cloud-storage's V4 signer
    (`signer_email`, `sign_bytes`) with an endpoint that tests can replace.
    """

    def __init__(self, credentials, email: str, endpoint: str | None = None):
        self.credentials = credentials
        self.email = email
        self.endpoint = (endpoint or os.environ.get(IAM_ENDPOINT_ENV) or IAM_ENDPOINT).rstrip("/")
        self._session = None

    @property
    def signer_email(self) -> str:
        return self.email

    @property
    def signer(self):
        return self

    def sign_bytes(self, message: bytes) -> bytes:
        from google.auth.transport.requests import AuthorizedSession

        if self._session is None:
            self._session = AuthorizedSession(self.credentials)
        url = f"{self.endpoint}/v1/projects/-/serviceAccounts/{self.email}:signBlob"
        resp = self._session.post(url, json={"payload": base64.b64encode(message).decode()}, timeout=30)
        if resp.status_code in (401, 403, 404):
            # A 403 to the client, not MLflow's default 500: MLflow clients retry a 500 for
            # minutes and then report "too many 500 error responses", never this message.
            raise MlflowException(
                f"IAM signBlob as {self.email} failed ({resp.status_code}): the server's account needs "
                "roles/iam.serviceAccountTokenCreator on itself to sign upload URLs",
                error_code=PERMISSION_DENIED,
            )
        if resp.status_code != 200:
            raise MlflowException(f"IAM signBlob as {self.email} failed ({resp.status_code})",
                                  error_code=TEMPORARILY_UNAVAILABLE)  # worth the client's retries
        return base64.b64decode(resp.json()["signedBlob"])


def _as_signing(signer: IamSigner):
    """Wrap `signer` in a google.auth Signing object, which google-cloud-storage insists on."""
    import google.auth.credentials

    class _Signing(google.auth.credentials.Signing):
        def sign_bytes(self, message):
            return signer.sign_bytes(message)

        @property
        def signer_email(self):
            return signer.signer_email

        @property
        def signer(self):
            return signer

    return _Signing()


def signing_credentials():
    """Credentials that can sign URLs: a key if the default credentials have one, else signBlob."""
    import google.auth
    import google.auth.credentials
    from google.auth.transport.requests import Request

    try:
        credentials, _project = google.auth.default(scopes=_SCOPES)
    except google.auth.exceptions.DefaultCredentialsError as err:
        # A server with no Google credentials at all (local mode against an emulator) cannot sign;
        # MLflow's own "not supported" answer makes the client fall back to one PUT per file,
        # which works wherever there is no 32 MiB front. On Cloud Run credentials always exist, so
        # a signing failure there (e.g. a missing role) stays a clear error instead.
        from mlflow.exceptions import _UnsupportedMultipartUploadException
        from mlflow.protos.databricks_pb2 import NOT_IMPLEMENTED

        raise MlflowException(
            f"{_UnsupportedMultipartUploadException.MESSAGE}: no Google credentials to sign part "
            f"upload URLs with ({err})",
            error_code=NOT_IMPLEMENTED,
        ) from None
    if isinstance(credentials, google.auth.credentials.Signing) and getattr(credentials, "signer", None):
        return credentials
    email = os.environ.get(SIGNER_EMAIL_ENV, "").strip()
    if not email:
        # Metadata credentials learn their account's email on refresh.
        credentials.refresh(Request())
        email = getattr(credentials, "service_account_email", "") or ""
    if not email or email == "default":
        raise MlflowException(f"cannot tell which service account signs upload URLs: set {SIGNER_EMAIL_ENV}")
    return _as_signing(IamSigner(credentials, email))


class UploadableGCSArtifactRepository(GCSArtifactRepository):
    """GCSArtifactRepository whose multipart uploads work on Cloud Run and against emulators."""

    _signing = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Also the client's class in direct mode: google-cloud-storage's resumable chunk would
        # otherwise be 100 MiB, held in memory per upload.
        if self._GCS_UPLOAD_CHUNK_SIZE is None:
            self._GCS_UPLOAD_CHUNK_SIZE = DIRECT_UPLOAD_CHUNK_SIZE

    def _signing_credentials(self):
        if self._signing is None:
            type(self)._signing = signing_credentials()  # one per process: signBlob needs no more
        return self._signing

    def _destination(self, local_file: str, artifact_path: str | None) -> tuple[str, str]:
        bucket, dest_path = self.parse_gcs_uri(self.artifact_uri)
        if artifact_path:
            dest_path = posixpath.join(dest_path, artifact_path)
        return bucket, posixpath.join(dest_path, os.path.basename(local_file))

    # ------------------------------------------------------------------ reserved prefixes

    def _object(self, path: str | None) -> str:
        _bucket, root = self.parse_gcs_uri(self.artifact_uri)
        return posixpath.join(root, path) if path else root

    def log_artifact(self, local_file, artifact_path=None):
        _refuse_reserved(self._destination(local_file, artifact_path)[1])
        super().log_artifact(local_file, artifact_path)

    def log_artifacts(self, local_dir, artifact_path=None):
        base = self._object(artifact_path)
        for root, _dirs, files in os.walk(local_dir):
            rel = os.path.relpath(root, local_dir)
            for name in files:
                _refuse_reserved(posixpath.normpath(posixpath.join(base, rel.replace(os.sep, "/"), name)))
        super().log_artifacts(local_dir, artifact_path)

    def list_artifacts(self, path=None):
        _refuse_reserved(self._object(path))
        return [info for info in super().list_artifacts(path) if not is_reserved(self._object(info.path))]

    def _download_file(self, remote_file_path, local_path):
        _refuse_reserved(self._object(remote_file_path))
        super()._download_file(remote_file_path, local_path)

    def delete_artifacts(self, artifact_path=None):
        bucket_name, _root = self.parse_gcs_uri(self.artifact_uri)
        dest = _refuse_reserved(self._object(artifact_path))
        # MLflow's loop, leaving out what is not an artifact (deleting the root would take them).
        for blob in self._get_bucket(bucket_name).list_blobs(prefix=dest):
            if _is_object_key_within_path(blob.name, dest) and not is_reserved(blob.name):
                blob.delete()

    # ------------------------------------------------------------------ multipart

    def create_multipart_upload(self, local_file, num_parts=1, artifact_path=None):
        num_parts = int(num_parts or 1)
        if num_parts > MAX_PARTS_PER_REQUEST:
            raise _bad_request(
                f"num_parts {num_parts} is above {MAX_PARTS_PER_REQUEST}, the most one upload may ask for: "
                f"raise MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE on the client so the file fits in "
                f"{MAX_PARTS_PER_REQUEST} parts (e.g. 67108864, 64 MiB parts, for files up to 128 GiB)"
            )
        if num_parts < 1:
            raise _bad_request(f"num_parts must be at least 1, got {num_parts}")
        bucket_name, dest = self._destination(local_file, artifact_path)
        _refuse_reserved(dest)
        bucket = self._get_bucket(bucket_name)
        upload_id = uuid.uuid4().hex
        credentials = self._signing_credentials()
        # Recorded before any URL exists: complete and abort hold the upload to this destination.
        bucket.blob(f"{UPLOADS_PREFIX}{upload_id}/{MARKER}").upload_from_string(
            json.dumps({"destination": f"gs://{bucket_name}/{dest}", "parts": num_parts}),
            content_type="application/json", if_generation_match=0, timeout=self._GCS_DEFAULT_TIMEOUT,
        )

        def sign(number: int) -> MultipartUploadCredential:
            url = bucket.blob(part_name(upload_id, number)).generate_signed_url(
                version="v4", method="PUT", expiration=URL_LIFETIME, credentials=credentials
            )
            # No headers: the client's part PUT carries none we signed, and no Authorization.
            return MultipartUploadCredential(url=url, part_number=number, headers={})

        try:
            with ThreadPoolExecutor(max_workers=min(SIGNING_THREADS, num_parts)) as pool:
                creds = list(pool.map(sign, range(1, num_parts + 1)))
        except BaseException:
            # No URL reached the client, so nothing can ever complete or abort this upload.
            self._delete_upload(bucket, upload_id)
            raise
        return CreateMultipartUploadResponse(upload_id=upload_id, credentials=creds)

    def complete_multipart_upload(self, local_file, upload_id, parts=None, artifact_path=None):
        from google.api_core import exceptions as gexc
        from mlflow.utils.mime_type_utils import _guess_mime_type

        check_upload_id(upload_id)
        numbers = sorted(int(p.part_number) for p in parts or [])
        if not numbers or numbers != list(range(1, len(numbers) + 1)):
            raise _bad_request("parts must be numbered 1..N without gaps")
        bucket_name, dest = self._destination(local_file, artifact_path)
        bucket = self._get_bucket(bucket_name)
        created = self._bound_upload(bucket, upload_id, dest)
        if len(numbers) != created["parts"]:
            raise _bad_request(
                f"upload {upload_id} was created with {created['parts']} parts; complete lists {len(numbers)}"
            )
        sources = [bucket.blob(part_name(upload_id, n)) for n in numbers]
        # Hard-delete the sources as they are used: deleted normally they would sit (and be
        # billed) in the bucket's soft-delete window. Emulators ignore it: _delete_upload sweeps.
        compose_kwargs = {"timeout": self._GCS_DEFAULT_TIMEOUT, "delete_source_objects": True}
        try:
            level = 0
            while len(sources) > COMPOSE_MAX_SOURCES:
                merged = []
                for i in range(0, len(sources), COMPOSE_MAX_SOURCES):
                    blob = bucket.blob(f"{UPLOADS_PREFIX}{upload_id}/compose-{level}-{i:05d}")
                    blob.compose(sources[i : i + COMPOSE_MAX_SOURCES], **compose_kwargs)
                    merged.append(blob)
                sources, level = merged, level + 1
            target = bucket.blob(dest)
            target.content_type = _guess_mime_type(os.path.basename(dest))
            target.compose(sources, **compose_kwargs)
        except gexc.NotFound:
            raise _bad_request(f"upload {upload_id} is missing parts (expired, aborted or never written)") from None
        self._delete_upload(bucket, upload_id)

    def abort_multipart_upload(self, local_file, upload_id, artifact_path=None):
        check_upload_id(upload_id)
        bucket_name, dest = self._destination(local_file, artifact_path)
        bucket = self._get_bucket(bucket_name)
        self._bound_upload(bucket, upload_id, dest)
        self._delete_upload(bucket, upload_id)

    def _bound_upload(self, bucket, upload_id: str, dest: str) -> dict:
        """The upload's marker, if the upload was created for `dest` in this bucket; else refused.

        Why: upload ids travel in clients' requests and logs; without the binding, anyone who
        learnt one could compose a victim's parts into a path of their own, or abort them."""
        from google.api_core import exceptions as gexc

        try:
            raw = bucket.blob(f"{UPLOADS_PREFIX}{upload_id}/{MARKER}").download_as_bytes(
                timeout=self._GCS_DEFAULT_TIMEOUT)
            created = json.loads(raw)
        except gexc.NotFound:
            raise _bad_request(f"upload {upload_id} is not one this server has open (expired, completed, "
                               "aborted or never created)") from None
        if created.get("destination") != f"gs://{bucket.name}/{dest}":
            raise MlflowException(f"upload {upload_id} was created for another artifact path",
                                  error_code=PERMISSION_DENIED)
        return created

    def _delete_upload(self, bucket, upload_id: str) -> None:
        from google.api_core import exceptions as gexc

        for blob in bucket.list_blobs(prefix=f"{UPLOADS_PREFIX}{upload_id}/"):
            try:
                blob.delete(timeout=self._GCS_DEFAULT_TIMEOUT)
            except gexc.NotFound:
                pass  # a concurrent abort got there first


def _register() -> None:
    from mlflow.store.artifact import artifact_repository_registry as registry

    registry._artifact_repository_registry.register("gs", UploadableGCSArtifactRepository)


_register()
