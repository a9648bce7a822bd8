"""gcp-storage-emulator on disk, with memory bounded for objects of several GiB (local mode's emulator).

The stock emulator reads a whole object into memory for every download, ranged ones included
(our server streams a download in 4 MiB ranged reads: ~1300 full reads of a 5 GiB object), builds
a composed object with `bytes +=`, re-reads and rewrites a resumable upload's whole file for every
chunk, and copies a deleted object's bytes into its soft-delete area. This starts the same
emulator, same routes, metadata, status codes and error messages, with those paths done on files:

- download: reads only the requested range (seek), and streams the response;
- compose and the last chunk of a resumable upload: the bytes go to the destination file in
  1 MiB blocks while md5 and crc32c are computed incrementally;
- a resumable chunk is appended to its file; delete moves the file to the soft-delete area.

In both modes the emulator answers only this machine's programs (`guard`): a loopback Host, and
no request a browser marks as sent by a web page (docs/security.md, "Local mode").

A faster emulator, not a fake: everything else is gcp-storage-emulator's own. With `--in-memory`
every object lives in RAM anyway, so it runs the stock paths unchanged.

The replaced paths lean on the emulator's internals, checked against the version pinned in
constraints.txt (`PINNED`). `check_shape()` lists what an installed version lacks; `patch()`
changes nothing and raises `UnsupportedEmulator` when that list is not empty, so a changed
emulator fails at start with one sentence instead of mid-upload.

    python -m mlflow_gcp.server.gcs_emulator --data-dir DIR --port PORT [--default-bucket B] [--quiet]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import inspect
import logging
import os
import re
import sys
import uuid
from http import HTTPStatus
from pathlib import Path

from mlflow_gcp.errors import MlflowGcpError

# constraints.txt's pin, the version tests/integration/test_gcs_emulator_bounded.py checked these
# paths against (a unit test keeps the two equal).
PINNED = "2026.7.19"

BLOCK = 1024 * 1024
_RANGE_RE = re.compile(r"^\s*bytes=(?P<start>[0-9]+)-(?P<end>[0-9]*)$")  # the stock one


class _FileSlice:
    """A response body that is `length` bytes of an open file from `start`, sent in blocks."""

    def __init__(self, path: Path, start: int, length: int):
        self.fh = open(path, "rb")  # opened now: a later rename or delete cannot change it
        self.start, self.length = start, max(0, length)

    def send(self, wfile) -> None:
        with self.fh:
            self.fh.seek(self.start)
            left = self.length
            while left > 0:
                block = self.fh.read(min(BLOCK, left))
                if not block:
                    break
                wfile.write(block)
                left -= len(block)


class _Resumed:
    """add_to_resumable_upload's answer once complete: the file holding the whole upload."""

    def __init__(self, path: Path, size: int):
        self.path, self.size = path, size


class _Digest:
    """md5 and crc32c of the bytes seen so far, base64 as the JSON API shows them."""

    def __init__(self):
        import google_crc32c

        self.md5, self.crc, self.size = hashlib.md5(), google_crc32c.Checksum(), 0

    def pump(self, fh, out=None, limit: int | None = None) -> None:
        """Read `fh` (up to `limit` bytes) in blocks, hashing each and copying it to `out`."""
        left = limit
        while left is None or left > 0:
            block = fh.read(BLOCK if left is None else min(BLOCK, left))
            if not block:
                return
            self.md5.update(block)
            self.crc.update(block)
            self.size += len(block)
            if out is not None:
                out.write(block)
            if left is not None:
                left -= len(block)

    def check(self, file_obj: dict) -> dict:
        return _check_digests(file_obj, _b64(self.crc.digest()), _b64(self.md5.digest()))


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _check_digests(file_obj: dict, crc32c: str, md5: str) -> dict:
    """objects._checksums with the digests already computed (same fields, same Conflicts)."""
    from gcp_storage_emulator.exceptions import Conflict
    from gcp_storage_emulator.handlers import objects

    if not file_obj.get("crc32c"):
        file_obj["crc32c"] = crc32c
    elif file_obj["crc32c"] != crc32c:
        raise Conflict(objects.CRC32C_CHECKSUM_ERROR.format(file_obj["crc32c"], crc32c))
    if not file_obj.get("md5Hash"):
        file_obj["md5Hash"] = md5
    elif file_obj["md5Hash"] != md5:
        raise Conflict(objects.MD5_CHECKSUM_ERROR.format(file_obj["md5Hash"], md5))
    if not file_obj.get("etag"):
        file_obj["etag"] = md5
    return file_obj


def _path(storage, bucket_name: str, file_name: str) -> Path:
    return storage._store._disk_path(storage._object_path(bucket_name, file_name))


def _scratch(storage) -> Path:
    # Inside the store (same filesystem, so the final rename is atomic); "_" is no bucket name.
    path = storage._store._disk_path("_scratch") / uuid.uuid4().hex
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _create_from_file(storage, bucket_name: str, file_name: str, src: Path, file_obj: dict, file_id=None):
    """Storage.create_file, with the content moved in from `src` instead of written from bytes."""
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.storage import RESUMABLE_DIR

    if bucket_name not in storage.buckets:
        src.unlink(missing_ok=True)
        raise NotFound
    dest = _path(storage, bucket_name, file_name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    storage.objects.setdefault(bucket_name, {})[file_name] = file_obj
    if file_id:
        storage.delete_resumable_file_obj(file_id)
        storage._delete_file(RESUMABLE_DIR, storage.safe_id(file_id))
    storage._write_config_to_file()


# ---------------------------------------------------------------- handlers


def download(request, response, storage, *args, **kwargs):
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    bucket_name, object_id = request.params["bucket_name"], request.params["object_id"]
    path = _path(storage, bucket_name, object_id)
    try:
        if not path.is_file():
            raise NotFound
        obj = storage.get_file_obj(bucket_name, object_id)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    size = path.stat().st_size
    start, end = 0, size
    range_header = request.get_header("range", None)
    if range_header:
        match = _RANGE_RE.fullmatch(range_header)
        if match:
            start = int(match["start"])
            if match["end"]:
                end = min(size, int(match["end"]) + 1)
            response["Content-Range"] = "bytes {}-{}/{}".format(start, end - 1, size)
            response.status = HTTPStatus.PARTIAL_CONTENT
    else:
        response[objects._HASH_HEADER] = "crc32c={},md5={}".format(obj["crc32c"], obj["md5Hash"])
    if "response-content-disposition" in request.query:
        response["Content-Disposition"] = request.query["response-content-disposition"][0]
    custom_metadata = obj.get("metadata") or {}
    if isinstance(custom_metadata, dict):
        for key, value in custom_metadata.items():
            if value is not None:
                response["x-goog-meta-{}".format(key)] = str(value)
    response.write_file(_FileSlice(path, start, end - start), content_type=obj.get("contentType"))


def compose(request, response, storage, *args, **kwargs):
    from gcp_storage_emulator.exceptions import Conflict, NotFound
    from gcp_storage_emulator.handlers import objects

    bucket_name = request.params["bucket_name"]
    content_type = None
    dest_properties = request.data["destination"]
    sources = []
    try:
        for src_obj in request.data["sourceObjects"]:
            if content_type is None:
                content_type = storage.get_file_obj(bucket_name, src_obj["name"])["contentType"]
            path = _path(storage, bucket_name, src_obj["name"])
            if not path.is_file():
                raise NotFound
            sources.append(path)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    scratch = _scratch(storage)
    digest = _Digest()
    with open(scratch, "wb") as out:
        for path in sources:
            with open(path, "rb") as fh:
                digest.pump(fh, out)
    dest_obj = objects._make_object_resource(
        request.base_url, bucket_name, request.params["object_id"], content_type,
        digest.size,  # an int here, where other handlers store a string: as the stock compose does
        dest_properties,
    )
    try:
        dest_obj = digest.check(dest_obj)
        _create_from_file(storage, bucket_name, request.params["object_id"], scratch, dest_obj)
        response.json(dest_obj)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
    except Conflict as err:
        scratch.unlink(missing_ok=True)
        objects._handle_conflict(response, err)


def _finalize_resumable_object(response, storage, obj, data, upload_id):
    if not isinstance(data, _Resumed):
        return _STOCK["_finalize_resumable_object"](response, storage, obj, data, upload_id)
    digest = _Digest()
    with open(data.path, "rb") as fh:
        digest.pump(fh, limit=data.size)
    obj = digest.check(obj)
    obj["size"] = str(data.size)
    os.truncate(data.path, data.size)  # bytes past the announced total are dropped, as in stock
    scratch = _scratch(storage)
    os.replace(data.path, scratch)
    _create_from_file(storage, obj["bucket"], obj["name"], scratch, obj, upload_id)
    response.json(obj)


# ---------------------------------------------------------------- storage methods


def get_resumable_byte_count(self, file_id):
    from gcp_storage_emulator.storage import RESUMABLE_DIR

    path = _path(self, RESUMABLE_DIR, self.safe_id(file_id))
    return path.stat().st_size if path.is_file() else 0


def add_to_resumable_upload(self, file_id, content, total_size=None, expected_start=None):
    from gcp_storage_emulator.exceptions import BadRequest
    from gcp_storage_emulator.storage import RESUMABLE_DIR

    path = _path(self, RESUMABLE_DIR, self.safe_id(file_id))
    have = path.stat().st_size if path.is_file() else 0
    if expected_start is not None and expected_start != have:
        raise BadRequest("Invalid Content-Range start: expected {}, got {}".format(have, expected_start))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(content or b"")
    size = have + len(content or b"")
    if total_size is None or size < total_size:
        return None
    return _Resumed(path, total_size)


def delete_file(self, bucket_name, file_name):
    """Storage.delete_file with the bytes renamed into the soft-delete area instead of copied."""
    from gcp_storage_emulator.exceptions import NotFound

    if bucket_name not in self.buckets or file_name not in self.objects.get(bucket_name, {}):
        raise NotFound("Object with name '{}' does not exist in bucket '{}'".format(file_name, bucket_name))
    file_obj = self.objects[bucket_name][file_name]
    retention = self._bucket_soft_delete_retention_seconds(bucket_name)
    if retention <= 0:
        self._hard_delete_file(bucket_name, file_name)
        return
    generation = str(file_obj.get("generation") or "0")
    now = datetime.datetime.now(datetime.timezone.utc)
    soft_obj = dict(file_obj)
    soft_obj["softDeleteTime"] = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    soft_obj["hardDeleteTime"] = (now + datetime.timedelta(seconds=retention)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kept = self._store._disk_path(self._soft_delete_content_path(bucket_name, file_name, generation))
    kept.parent.mkdir(parents=True, exist_ok=True)
    live = _path(self, bucket_name, file_name)
    if live.is_file():
        os.replace(live, kept)
    else:
        kept.write_bytes(b"")
    self.soft_deleted.setdefault(bucket_name, {}).setdefault(file_name, {})[generation] = soft_obj
    del self.objects[bucket_name][file_name]
    self._write_config_to_file()


# ---------------------------------------------------------------- wiring

_STOCK: dict = {}


class UnsupportedEmulator(MlflowGcpError):
    """The installed gcp-storage-emulator lacks an internal the bounded paths replace or call."""


def _close(self):
    """server.Response.close, streaming a _FileSlice body instead of holding it."""
    if not isinstance(self._content, _FileSlice):
        return _STOCK["close"](self)
    self._handler.send_response(self.status.value, self.status.phrase)
    for key, value in self._headers.items():
        self._handler.send_header(key, value)
    self._handler.send_header("Content-Length", str(self._content.length))
    self._handler.end_headers()
    self._content.send(self._handler.wfile)


# What the paths above replace or call, with the parameters they pass or receive.
_HANDLER = ("request", "response", "storage")
_FUNCTIONS = {
    "objects.download": _HANDLER,
    "objects.compose": _HANDLER,
    "objects._finalize_resumable_object": ("response", "storage", "obj", "data", "upload_id"),
    "objects._make_object_resource": (
        "base_url", "bucket_name", "object_name", "content_type", "content_length", "metadata"),
    "objects._handle_conflict": ("response", "err"),
    "server.Response.close": ("self",),
    "server.Router.handle": ("self", "method"),  # the guard wraps it
    "server.Response.write_file": ("self", "content", "content_type"),
    "storage.Storage.get_resumable_byte_count": ("self", "file_id"),
    "storage.Storage.add_to_resumable_upload": ("self", "file_id", "content", "total_size", "expected_start"),
    "storage.Storage.delete_file": ("self", "bucket_name", "file_name"),
    "storage.Storage.get_file_obj": ("self", "bucket_name", "file_name"),
    "storage.Storage.delete_resumable_file_obj": ("self", "file_id"),
    "storage.Storage._object_path": ("self", "bucket_name", "file_name"),
    "storage.Storage._delete_file": ("self", "bucket_name", "file_name"),
    "storage.Storage._write_config_to_file": ("self",),
    "storage.Storage._hard_delete_file": ("self", "bucket_name", "file_name"),
    "storage.Storage._bucket_soft_delete_retention_seconds": ("self", "bucket_name"),
    "storage.Storage._soft_delete_content_path": ("self", "bucket_name", "file_name", "generation"),
    "storage._FileStore._disk_path": ("self", "rel"),
}
_VALUES = (
    "objects.CRC32C_CHECKSUM_ERROR", "objects.MD5_CHECKSUM_ERROR", "objects._HASH_HEADER",
    "storage.RESUMABLE_DIR", "storage.Storage.safe_id", "server.HANDLERS", "server.create_server",
    "exceptions.NotFound", "exceptions.Conflict", "exceptions.BadRequest",
)
_STORAGE_ATTRS = ("buckets", "objects", "soft_deleted", "_store")
_RESPONSE_ATTRS = ("_handler", "status", "_headers", "_content")


def _modules() -> dict:
    from gcp_storage_emulator import exceptions, server, storage
    from gcp_storage_emulator.handlers import objects

    return {"objects": objects, "server": server, "storage": storage, "exceptions": exceptions}


def _lookup(modules: dict, dotted: str):
    head, *rest = dotted.split(".")
    value = modules[head]
    for name in rest:
        value = getattr(value, name)
    return value


def installed_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("gcp-storage-emulator")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_shape() -> list[str]:
    """What the installed gcp-storage-emulator lacks of what the bounded paths use ([] = all there)."""
    try:
        modules = _modules()
    except ImportError as err:
        return [f"cannot import it ({err})"]
    problems = []
    for dotted in _VALUES:
        try:
            _lookup(modules, dotted)
        except AttributeError:
            problems.append(f"{dotted} is gone")
    for dotted, params in _FUNCTIONS.items():
        try:
            fn = _lookup(modules, dotted)
        except AttributeError:
            problems.append(f"{dotted} is gone")
            continue
        try:
            have = tuple(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            problems.append(f"{dotted} is no longer a function")
            continue
        if have[: len(params)] != params:
            problems.append(f"{dotted} takes ({', '.join(have)}), not ({', '.join(params)})")
    if problems:
        return problems
    try:
        store = modules["storage"].Storage(use_memory_fs=True)
        response = modules["server"].Response(None)
        routed = {h for _regex, handlers in modules["server"].HANDLERS for h in handlers.values()}
    except Exception as err:  # noqa: BLE001 - any failure here is a changed shape, said in one line
        return [f"its Storage, Response or HANDLERS changed ({type(err).__name__}: {err})"]
    problems += [f"Storage().{a} is gone" for a in _STORAGE_ATTRS if not hasattr(store, a)]
    problems += [f"Response().{a} is gone" for a in _RESPONSE_ATTRS if not hasattr(response, a)]
    objects = modules["objects"]
    problems += [f"server.HANDLERS no longer routes to objects.{f.__name__}"
                 for f in (objects.download, objects.compose) if f not in routed]
    return problems


def patch() -> None:
    """Swap the bounded-memory paths into gcp-storage-emulator (idempotent; all or nothing)."""
    if _STOCK:
        return
    problems = check_shape()
    if problems:
        raise UnsupportedEmulator(
            f"gcp-storage-emulator {installed_version()} is not the shape local mode's bounded "
            f"emulator patches: {'; '.join(problems)}",
            hint=f"pip install gcp-storage-emulator=={PINNED}",
        )
    from gcp_storage_emulator import server, storage
    from gcp_storage_emulator.handlers import objects

    _STOCK.update(
        download=objects.download, compose=objects.compose, close=server.Response.close,
        _finalize_resumable_object=objects._finalize_resumable_object,
    )
    objects.download, objects.compose = download, compose  # objects.get calls download by name
    objects._finalize_resumable_object = _finalize_resumable_object
    server.Response.close = _close
    storage.Storage.get_resumable_byte_count = get_resumable_byte_count
    storage.Storage.add_to_resumable_upload = add_to_resumable_upload
    storage.Storage.delete_file = delete_file
    # The route table holds the functions it was built with.
    replaced = {_STOCK["download"]: download, _STOCK["compose"]: compose}
    for _regex, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            handlers[method] = replaced.get(handler, handler)


# ---------------------------------------------------------------- guard

_BROWSER_REFUSED = "Cross-site request blocked: this GCS emulator answers programs, not web pages"


def refusal(headers, allowed_hosts: tuple[str, ...]) -> str | None:
    """Why a request is refused, or None. Only this machine's programs are served: a Host that is
    a loopback name (a DNS-rebinding page sends its own name), and nothing a browser marks as sent
    by a page (`Origin`, or `Sec-Fetch-Site` other than a typed-in address): a page could
    otherwise overwrite artifacts with a no-cors upload. google-cloud-storage and MLflow's client
    send neither header."""
    host = headers.get("Host")
    if host not in allowed_hosts:
        return f"Invalid Host header {host!r}: this GCS emulator answers only {', '.join(allowed_hosts)}"
    if headers.get("Origin") is not None or headers.get("Sec-Fetch-Site", "none") != "none":
        return _BROWSER_REFUSED
    return None


def guard(port: int) -> None:
    """Refuse, before any route runs, what `refusal` refuses (idempotent)."""
    from gcp_storage_emulator import server

    from mlflow_gcp.server.env import loopback_hosts

    if "handle" in _STOCK:
        return
    _STOCK["handle"] = stock = server.Router.handle
    allowed = loopback_hosts(port)

    def handle(self, method):
        handler = self._request_handler
        problem = refusal(handler.headers, allowed)
        if problem is None:
            return stock(self, method)
        body = problem.encode()
        handler.close_connection = True  # the request's body, if any, stays unread
        handler.send_response(HTTPStatus.FORBIDDEN.value, HTTPStatus.FORBIDDEN.phrase)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)

    server.Router.handle = handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_gcp.server.gcs_emulator", description=__doc__.split("\n\n")[0]
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="the objects' folder (bounded memory)")
    where.add_argument("--in-memory", action="store_true", help="objects in RAM (the stock paths)")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--default-bucket", default=None, help="created at start if missing")
    parser.add_argument("--quiet", action="store_true", help="log only critical messages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL if args.quiet else logging.INFO, format="%(message)s")
    if args.data_dir is not None:
        try:
            patch()
        except UnsupportedEmulator as err:
            print(f"Error: {err}", file=sys.stderr)
            return 2
    guard(args.port)
    from gcp_storage_emulator.server import create_server

    # Absolute: the stock Storage refuses a relative data dir.
    data_dir = str(args.data_dir.resolve()) if args.data_dir is not None else None
    create_server(args.host, args.port, in_memory=args.in_memory, default_bucket=args.default_bucket,
                  data_dir=data_dir).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
