"""Building the server image on Cloud Build: no local Docker needed.

The build context is the project checkout the tool runs from (Dockerfile, pyproject.toml,
constraints.txt, README.md, src/), packed reproducibly (sorted, zero mtimes) so the same source
gives the same object name, uploaded under the artifact bucket's build prefix (which a lifecycle
rule clears after a month).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

from mlflow_gcp.errors import MlflowGcpError
from mlflow_gcp.gcp import cloudbuild, storage
from mlflow_gcp.plan import desired

_FILES = ("Dockerfile", "pyproject.toml", "constraints.txt", "README.md", ".dockerignore")
_SKIP_PARTS = {"__pycache__", ".pytest_cache"}


def source_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "Dockerfile").is_file() and (parent / "pyproject.toml").is_file():
            return parent
    raise MlflowGcpError(
        "cannot build the server image: no Dockerfile next to this installation",
        hint="run from a checkout of mlflow-gcp, or set service.image to an image you built",
    )


def source_tarball(root: Path) -> bytes:
    buf = io.BytesIO()
    paths = [root / f for f in _FILES if (root / f).is_file()]
    paths += sorted(
        p for p in (root / "src").rglob("*")
        if p.is_file() and not (_SKIP_PARTS & set(p.parts)) and ".egg-info" not in str(p) and p.suffix != ".pyc"
    )
    # gzip's header carries a timestamp too: zero it, or the same source hashes differently.
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def build(ctx) -> str | None:
    """Upload the source, build and push cfg.image_uri; the pushed digest (sha256:...)."""
    data = source_tarball(source_root())
    digest = hashlib.sha256(data).hexdigest()[:16]
    obj = f"{desired.BUILD_PREFIX}source-{digest}.tar.gz"
    storage.upload(ctx.clients, ctx.cfg.bucket_name, obj, data, "application/gzip")
    result = cloudbuild.build(ctx.clients, desired.build(ctx.cfg, ctx.cfg.bucket_name, obj), progress=ctx.progress)
    for image in (result.get("results") or {}).get("images") or []:
        if image.get("digest"):
            return image["digest"]
    return None
