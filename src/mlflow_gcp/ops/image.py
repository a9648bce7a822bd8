"""Building the server image on Cloud Build: no local Docker needed.

The build context (image_source: this checkout, packed reproducibly) is uploaded under the
artifact bucket's build prefix, which a lifecycle rule clears after a month, and named by its
digest, as the image tag is.
"""

from __future__ import annotations

from mlflow_gcp import image_source
from mlflow_gcp.gcp import cloudbuild, storage
from mlflow_gcp.plan import desired


def build(ctx) -> str | None:
    """Upload the source, build and push cfg.image_uri; the pushed digest (sha256:...)."""
    data, digest = image_source.packed()
    obj = f"{desired.BUILD_PREFIX}source-{digest[:16]}.tar.gz"
    storage.upload(ctx.clients, ctx.cfg.bucket_name, obj, data, "application/gzip")
    result = cloudbuild.build(ctx.clients, desired.build(ctx.cfg, ctx.cfg.bucket_name, obj), progress=ctx.progress)
    for image in (result.get("results") or {}).get("images") or []:
        if image.get("digest"):
            return image["digest"]
    return None
