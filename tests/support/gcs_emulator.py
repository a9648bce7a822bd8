"""gcp-storage-emulator on disk, with memory bounded for objects of several GiB.

The stock emulator reads a whole object into memory for every download, ranged ones included
(our server streams a download in 4 MiB ranged reads: ~1300 full reads of a 5 GiB object), builds
a composed object with `bytes +=`, re-reads and rewrites a resumable upload's whole file for every
chunk, and copies a deleted object's bytes into its soft-delete area. This starts the same
emulator, same routes, metadata, status codes and error messages, with those paths done on files:

- download: reads only the requested range (seek), and streams the response;
- compose and the last chunk of a resumable upload: the bytes go to the destination file in
  1 MiB blocks while md5 and crc32c are computed incrementally;
- a resumable chunk is appended to its file; delete moves the file to the soft-delete area.

A faster emulator, not a fake of our code: everything else is gcp-storage-emulator's own.

    python -m tests.support.gcs_emulator --data-dir DIR --port PORT
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import os
import re
import subprocess
import sys
import uuid
from http import HTTPStatus
from pathlib import Path

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


def patch() -> None:
    """Swap the bounded-memory paths into gcp-storage-emulator (idempotent)."""
    from gcp_storage_emulator import server, storage
    from gcp_storage_emulator.handlers import objects

    if _STOCK:
        return
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


def start(data_dir: Path, **popen) -> tuple[subprocess.Popen, str]:
    """This emulator on a free port with its files in `data_dir`; (process, http://host:port)."""
    from mlflow_gcp.server import local

    data_dir.mkdir(parents=True, exist_ok=True)
    port = local.free_port()
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "tests.support.gcs_emulator", "--data-dir", str(data_dir), "--port", str(port)]
    proc = local.start_group(argv, env, **popen)
    host = f"http://127.0.0.1:{port}"
    try:
        local.wait_http(f"{host}/storage/v1/b?project=local", proc, 30, "the GCS emulator")
    except local.LocalError:
        local.stop_group(proc)
        raise
    return proc, host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    patch()
    from gcp_storage_emulator.server import create_server

    # Absolute: the stock Storage refuses a relative data dir.
    create_server(args.host, args.port, in_memory=False, data_dir=str(args.data_dir.resolve())).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
