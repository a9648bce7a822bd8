"""The UI's static files (MLflow's React build) served gzip-compressed from copies made once.

Why: MLflow sends its 27 MB UI build uncompressed (main.js alone is 4.4 MB), and Cloud Run does
not compress answers, so a first visit across the internet downloads all of it. JavaScript and
CSS shrink to about a quarter with gzip. Compressing on every request would cost the instance
CPU the API needs; so each file is compressed once (level 9) into a cache directory: at image
build (`python -m mlflow_gcp.server.uiassets DIR`, see the Dockerfile) or, where no one did that
(local mode), on its first request, then reused from disk.

Only GET/HEAD of `/static-files/<file>` is answered here, and only when the browser accepts gzip
and the file is one that compresses (text formats, not images or WOFF2 fonts, which are already
compressed); every other request, a Range request included, is MLflow's. The answer keeps
MLflow's headers (type, disposition, Last-Modified) and adds `Content-Encoding: gzip` and
`Vary: Accept-Encoding`; files whose names carry a content hash (`main.c2f5f8d4.js`) are cached
a year and marked immutable, a new MLflow release names them anew. An ETag of its own per
encoding answers a revalidation with 304.
"""

from __future__ import annotations

import email.utils
import gzip
import mimetypes
import os
import re
import sys
import tempfile
from pathlib import Path

PREFIX = "/static-files/"
CACHE_ENV = "MLFLOW_GCP_UI_CACHE"
# Compressible formats; images and fonts (WOFF/WOFF2) are compressed already.
COMPRESSIBLE = frozenset((".js", ".css", ".html", ".json", ".map", ".svg", ".txt", ".ico", ".ttf",
                          ".eot", ".otf", ".xml", ".wasm", ".md"))
MIN_SIZE = 1024  # smaller files gain less than gzip's header and a second lookup cost
HASHED = re.compile(r"\.[0-9a-f]{8,}\.([a-z]+\.)?[a-z0-9]+$")  # main.c2f5f8d4.js, 1.ab12cd34.chunk.js
IMMUTABLE = b"public, max-age=31536000, immutable"
MLFLOW_MAX_AGE = b"public, max-age=2419200"  # what MLflow's route gives every static file
LEVEL = 9


def build_dir() -> Path | None:
    """MLflow's UI build directory (without importing MLflow: that takes seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "server" / "js" / "build"
    return path if path.is_dir() else None


def default_cache_dir() -> Path:
    """$MLFLOW_GCP_UI_CACHE, else a per-user cache keyed by the installed MLflow version."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("mlflow")
    except PackageNotFoundError:
        release = "unknown"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mlflow-gcp" / f"ui-mlflow-{release}"


def compressible(path: Path) -> bool:
    return path.suffix.lower() in COMPRESSIBLE


def accepts_gzip(headers) -> bool:
    """True when an Accept-Encoding header of `headers` (ASGI byte pairs) allows gzip."""
    for name, value in headers:
        if name != b"accept-encoding":
            continue
        for part in value.decode("latin-1").lower().split(","):
            coding, _, params = part.strip().partition(";")
            if coding.strip() in ("gzip", "x-gzip", "*"):
                q = params.strip()
                if q.startswith("q="):
                    try:
                        return float(q[2:]) > 0
                    except ValueError:
                        return False
                return True
    return False


class Compressed:
    """The gzip copies of one build directory, kept in `cache`."""

    def __init__(self, build: Path, cache: Path):
        self.build = build.resolve()
        self.cache = cache

    def source(self, relative: str) -> Path | None:
        """The build file `relative` names, if it is one worth compressing."""
        if not relative or "\\" in relative or "\0" in relative:
            return None
        path = (self.build / relative).resolve()
        if self.build not in path.parents or not compressible(path):
            return None
        try:
            if not path.is_file() or path.stat().st_size < MIN_SIZE:
                return None
        except OSError:
            return None
        return path

    def copy(self, source: Path) -> Path:
        """Its gzip copy, made now if there is none for this version of the file."""
        stat = source.stat()
        rel = source.relative_to(self.build)
        target = self.cache / rel.parent / f"{rel.name}.{stat.st_mtime_ns}-{stat.st_size}.gz"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            data = gzip.compress(source.read_bytes(), compresslevel=LEVEL, mtime=0)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            # Public content; mkstemp's 0600 would keep the image's runtime user (not the
            # build's root) from reading the copies made at build.
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)  # concurrent first requests each write whole files
        return target

    def precompress(self) -> tuple[int, int, int]:
        """Every compressible file now: (files, bytes before, bytes after)."""
        files = before = after = 0
        for path in sorted(self.build.rglob("*")):
            relative = path.relative_to(self.build).as_posix()
            if self.source(relative) is None:
                continue
            files += 1
            before += path.stat().st_size
            after += self.copy(path).stat().st_size
        return files, before, after


def _headers(source: Path, copy: Path, etag: bytes, relative: str) -> list[tuple[bytes, bytes]]:
    stat = source.stat()
    from werkzeug.utils import get_content_type

    # What Flask's send_from_directory gives MLflow's answer for the same file.
    kind = get_content_type(mimetypes.guess_type(source.name)[0] or "application/octet-stream", "utf-8")
    return [
        (b"content-type", kind.encode()),
        (b"content-encoding", b"gzip"),
        (b"content-length", str(copy.stat().st_size).encode()),
        (b"content-disposition", f"inline; filename={source.name}".encode()),
        (b"last-modified", email.utils.formatdate(stat.st_mtime, usegmt=True).encode()),
        (b"cache-control", IMMUTABLE if HASHED.search(relative) else MLFLOW_MAX_AGE),
        (b"etag", etag),
    ]


class StaticFiles:
    """ASGI: compressed UI files for browsers that accept gzip; everything else to `app`.
    (The server's guard, outside, checks these requests as every other: server/guard.py.)"""

    def __init__(self, app, compressed: Compressed):
        self.app = app
        self.compressed = compressed

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["method"] not in ("GET", "HEAD")
                or not scope["path"].startswith(PREFIX)):
            await self.app(scope, receive, send)
            return
        relative = scope["path"][len(PREFIX):]
        source = self.compressed.source(relative)
        headers = scope["headers"]
        if source is None or any(name == b"range" for name, _ in headers) or not accepts_gzip(headers):
            # The same URL has a compressed form: caches must know.
            await self.app(scope, receive, send if source is None else _add_vary(send))
            return
        import anyio

        try:
            copy = await anyio.to_thread.run_sync(self.compressed.copy, source)
            body = b"" if scope["method"] == "HEAD" else await anyio.to_thread.run_sync(copy.read_bytes)
        except OSError as err:  # an unreadable, read-only or full cache: MLflow serves the file
            print(f"WARNING UI file not compressed: {err}", file=sys.stderr, flush=True)
            await self.app(scope, receive, _add_vary(send))
            return
        etag = f'"{copy.name[:-3]}-gz"'.encode()
        answer = with_vary(_headers(source, copy, etag, relative))
        if any(name == b"if-none-match" and etag in value for name, value in headers):
            await send({"type": "http.response.start", "status": 304,
                        "headers": [h for h in answer if h[0] not in (b"content-length", b"content-type")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": answer})
        await send({"type": "http.response.body", "body": body})


def with_vary(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` with Accept-Encoding in their Vary (one header, as MLflow's CORS layer keeps it)."""
    out, done = [], False
    for name, value in headers:
        if name.lower() == b"vary" and not done:
            if b"accept-encoding" not in value.lower():
                value = value + b", Accept-Encoding"
            done = True
        out.append((name, value))
    if not done:
        out.append((b"vary", b"Accept-Encoding"))
    return out


def _add_vary(send):
    async def send_with_vary(message):
        if message["type"] == "http.response.start" and message["status"] == 200:
            message = {**message, "headers": with_vary(message["headers"])}
        await send(message)

    return send_with_vary


def wrap(app):
    """`app` with compressed UI files in front (as is when MLflow has no UI build)."""
    build = build_dir()
    if build is None:
        return app
    return StaticFiles(app, Compressed(build, default_cache_dir()))


def main(argv: list[str] | None = None) -> int:
    """`python -m mlflow_gcp.server.uiassets [DIR]`: compress every UI file into DIR (default:
    the cache the server uses) now, as the image build does."""
    args = sys.argv[1:] if argv is None else argv
    build = build_dir()
    if build is None:
        print("mlflow is not installed, or has no UI build", file=sys.stderr)
        return 1
    cache = Path(args[0]) if args else default_cache_dir()
    files, before, after = Compressed(build, cache).precompress()
    print(f"{files} UI files compressed into {cache}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
