"""The server image's build context: this package's own source, packed reproducibly.

The context is the project checkout the tool runs from (Dockerfile, pyproject.toml,
constraints.txt, README.md, src/), sorted, with zero mtimes and owners, so the same source gives
the same bytes. Its sha256 names the image tag (config.Config.image_uri) and the uploaded
object, so a new mlflow-gcp release with the same MLflow version is a new image that `up` builds
and rolls out. Standard library only: config.py imports it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

from mlflow_gcp.errors import MlflowGcpError

_FILES = ("Dockerfile", "pyproject.toml", "constraints.txt", "README.md", ".dockerignore")
_SKIP_PARTS = {"__pycache__", ".pytest_cache"}
# Hex digits of the source digest in the image tag: 48 bits make a collision between two
# releases of one deployment negligible, and the tag stays readable.
TAG_DIGEST_CHARS = 12


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


@functools.cache
def _packed(root: Path) -> tuple[bytes, str]:
    data = source_tarball(root)
    return data, hashlib.sha256(data).hexdigest()


def packed() -> tuple[bytes, str]:
    """The tarball and its sha256 hex, packed once per process (about 30 ms): the tag computed at
    plan time and the source uploaded for the build stay the same even if files change meanwhile."""
    return _packed(source_root())


def digest() -> str:
    """The source's part of the image tag."""
    return packed()[1][:TAG_DIGEST_CHARS]


def forget() -> None:
    """Pack again on the next call, as a new process would (tests)."""
    _packed.cache_clear()
