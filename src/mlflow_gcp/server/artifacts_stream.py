"""Proxied gs:// artifact downloads streamed from the bucket, never staged on the instance's disk.

MLflow serves `GET /api/2.0/mlflow-artifacts/artifacts/<path>` (and the UI's /ajax-api/ twin) by
downloading the whole object into a temporary directory and then streaming that file. On Cloud
Run the disk is memory: a 5 GiB model would need 5 GiB of RAM and be refused or kill the
instance, and the first byte waits for the last. This ASGI middleware answers those requests for
a gs:// artifacts destination by reading the object in ranged chunks (google-cloud-storage's
BlobReader) and sending each chunk as it comes: memory is one chunk per download, nothing touches
the disk. Anything it does not recognise (another destination, workspaces on, a directory, a
missing object) goes to MLflow unchanged, so MLflow's own errors and rules still apply.
"""

from __future__ import annotations

import asyncio
import os
import re

CHUNK_SIZE = 4 * 1024 * 1024  # one ranged read of the object; a download holds a few of these
_PATH_RE = re.compile(r"^/(?:api|ajax-api)/2\.0/mlflow-artifacts/artifacts/(?P<path>.+)$")


class StreamedArtifactDownloads:
    def __init__(self, app):
        self.app = app
        self._bucket = None
        self._prefix = None

    def _destination(self) -> tuple[str, str] | None:
        """(bucket, prefix) when this server proxies a gs:// destination and MLflow would not
        rewrite paths per workspace; else None (MLflow handles everything)."""
        from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
        from mlflow.server import ARTIFACTS_DESTINATION_ENV_VAR, SERVE_ARTIFACTS_ENV_VAR

        dest = os.environ.get(ARTIFACTS_DESTINATION_ENV_VAR, "")
        if os.environ.get(SERVE_ARTIFACTS_ENV_VAR) != "true" or not dest.startswith("gs://"):
            return None
        if MLFLOW_ENABLE_WORKSPACES.get():
            return None
        bucket, _, prefix = dest[len("gs://") :].partition("/")
        return bucket, prefix.strip("/")

    def _blob(self, artifact_path: str):
        """The object's blob with its size loaded, or None to let MLflow answer."""
        from google.api_core import exceptions as gexc
        from mlflow.server.handlers import _get_artifact_repo_mlflow_artifacts
        from mlflow.utils.uri import validate_path_is_safe

        where = self._destination()
        if where is None:
            return None
        bucket_name, prefix = where
        try:
            artifact_path = validate_path_is_safe(artifact_path)
        except Exception:
            return None  # MLflow refuses it with its own message
        from mlflow_gcp.server.artifacts_gcs import is_reserved

        repo = _get_artifact_repo_mlflow_artifacts()  # MLflow's client, credentials and timeouts
        name = f"{prefix}/{artifact_path}" if prefix else artifact_path
        if is_reserved(name):
            return None  # not an artifact: the repository refuses it with its own message
        blob = repo._get_bucket(bucket_name).blob(name, chunk_size=CHUNK_SIZE)
        try:
            blob.reload()
        except gexc.NotFound:
            return None  # a directory or a missing file: MLflow's answer
        return blob

    async def __call__(self, scope, receive, send):
        match = _PATH_RE.match(scope.get("path", "")) if scope["type"] == "http" else None
        if not match or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        artifact_path = match.group("path")  # ASGI paths arrive percent-decoded already
        blob = await asyncio.to_thread(self._blob, artifact_path)
        if blob is None:
            await self.app(scope, receive, send)
            return
        await self._stream(blob, artifact_path, scope["method"] == "HEAD", send)

    async def _stream(self, blob, artifact_path: str, head_only: bool, send) -> None:
        from mlflow.server.handlers import _content_disposition_attachment
        from mlflow.utils.mime_type_utils import _guess_mime_type

        filename = artifact_path.rsplit("/", 1)[-1]
        headers = [
            (b"content-type", _guess_mime_type(filename).encode()),
            (b"content-length", str(blob.size).encode()),
            (b"content-disposition", _content_disposition_attachment(filename).encode()),
            (b"x-content-type-options", b"nosniff"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if head_only or not blob.size:
            await send({"type": "http.response.body", "body": b""})
            return
        # Pinned to the generation just read: a concurrent overwrite cannot splice two versions.
        reader = await asyncio.to_thread(
            blob.open, "rb", chunk_size=CHUNK_SIZE, if_generation_match=blob.generation
        )
        try:
            sent = 0
            while sent < blob.size:
                chunk = await asyncio.to_thread(reader.read, CHUNK_SIZE)
                if not chunk:
                    break  # headers are gone: a short body is how the client learns of it
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": sent < blob.size})
            if sent < blob.size:
                await send({"type": "http.response.body", "body": b""})
        finally:
            await asyncio.to_thread(reader.close)


def wrap(app):
    return StreamedArtifactDownloads(app)
