"""Cloud Storage JSON API v1: buckets (insert/get/patch/update/delete/list, IAM with etags) and
enough of objects (insert/list/get/delete, simple media upload and download) for the semantics
the deploy relies on: deleting a bucket that still holds objects is a 409.

Bucket names are global, as in Google: a name taken by another project is a 409 too.
"""

from __future__ import annotations

import base64
import copy
import email.parser
import email.policy
import json
import hashlib
import re

from ..core.api import (ApiModule, IamPolicies, Request, deep_merge, handles, now, paginate,
                        project_number)
from ..core.errors import GcpError, invalid_argument

_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
_BASE = "https://www.googleapis.com/storage/v1"
MULTI_REGIONS = {"US", "EU", "ASIA"}
DUAL_REGIONS = {"NAM4", "EUR4", "ASIA1", "EUR5", "EUR7", "EUR8"}


def _err(code: int, message: str, reason: str) -> GcpError:
    return GcpError(code, message, None, reason)


def _missing_bucket() -> GcpError:
    return _err(404, "The specified bucket does not exist.", "notFound")


def _multipart(content_type: str, raw: bytes) -> tuple[dict, bytes, str]:
    """Split a multipart/related upload into (metadata JSON, data, data content type)."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    parts = list(msg.iter_parts())
    if len(parts) != 2:
        raise _err(400, "A multipart upload needs exactly a metadata part and a data part.", "invalid")
    meta = json.loads(parts[0].get_payload(decode=True) or b"{}")
    return meta, parts[1].get_payload(decode=True) or b"", parts[1].get_content_type()


class Storage(ApiModule):
    name = "storage"
    versions = ("v1",)
    service = "storage.googleapis.com"
    title = "Cloud Storage API"

    def reset(self) -> None:
        self.state: dict[str, dict] = {}  # bucket name -> Bucket
        self.objects: dict[str, dict[str, dict]] = {}  # bucket -> object name -> Object
        self.data: dict[tuple[str, str], bytes] = {}
        self.iam = IamPolicies(stale_code=412, member_check=self.fake.check_member)  # key: bucket name

    def snapshot(self) -> dict:
        return {"buckets": self.state, "iam": self.iam.policies,
                "objects": {b: sorted(objs) for b, objs in self.objects.items()}}

    def alias_path(self, raw_path: str) -> str:
        # google-cloud-storage downloads media from /download/storage/v1/b/B/o/O?alt=media.
        if raw_path.startswith("download/storage/v1/"):
            return raw_path[len("download/"):]
        return raw_path

    def project_of(self, req: Request) -> str | None:
        if req.get("project"):
            return req.get("project")
        bucket = self.state.get(req.get("bucket") or "")
        return bucket["_project"] if bucket else None

    def bucket(self, name: str) -> dict:
        b = self.state.get(name)
        if b is None:
            raise _missing_bucket()
        return b

    @staticmethod
    def _public(bucket: dict) -> dict:
        return {k: copy.deepcopy(v) for k, v in bucket.items() if not k.startswith("_")}

    @staticmethod
    def _etag(meta: int) -> str:
        return base64.b64encode(bytes([0x08, meta & 0x7F])).decode()

    def _preconditions(self, req: Request, bucket: dict) -> None:
        want = req.get("ifMetagenerationMatch")
        if want is not None and str(want) != bucket["metageneration"]:
            raise _err(412, "Precondition Failed", "conditionNotMet")
        unwanted = req.get("ifMetagenerationNotMatch")
        if unwanted is not None and str(unwanted) == bucket["metageneration"]:
            raise GcpError(304, "Not Modified", None, "notModified")

    def _normalize(self, b: dict) -> None:
        iam_cfg = b.setdefault("iamConfiguration", {})
        ubla = iam_cfg.get("uniformBucketLevelAccess") or iam_cfg.get("bucketPolicyOnly") or {"enabled": False}
        ubla = {"enabled": bool(ubla.get("enabled"))}
        if ubla["enabled"]:
            ubla["lockedTime"] = b.get("_ubla_locked") or now()
            b["_ubla_locked"] = ubla["lockedTime"]
        iam_cfg["uniformBucketLevelAccess"] = ubla
        iam_cfg["bucketPolicyOnly"] = dict(ubla)
        iam_cfg.setdefault("publicAccessPrevention", "inherited")
        if iam_cfg["publicAccessPrevention"] not in ("inherited", "enforced", "unspecified"):
            raise invalid_argument("Invalid value for publicAccessPrevention.", field="iamConfiguration.publicAccessPrevention")
        sdp = b.get("softDeletePolicy")
        if sdp is None:
            sdp = {"retentionDurationSeconds": "604800"}
        seconds = int(sdp.get("retentionDurationSeconds", 0) or 0)
        if seconds and not 604800 <= seconds <= 7776000:
            raise _err(400, "The soft delete policy retention duration must be 0 or between 7 "
                       "and 90 days.", "invalid")
        b["softDeletePolicy"] = {"retentionDurationSeconds": str(seconds),
                                 "effectiveTime": sdp.get("effectiveTime") or now()}
        for rule in (b.get("lifecycle") or {}).get("rule", []) or []:
            action = rule.get("action") or {}
            if action.get("type") not in ("Delete", "SetStorageClass", "AbortIncompleteMultipartUpload"):
                raise invalid_argument(f"Invalid lifecycle action type: {action.get('type')!r}.",
                                       field="lifecycle.rule.action.type")
            if action["type"] == "SetStorageClass" and not action.get("storageClass"):
                raise invalid_argument("SetStorageClass needs a storageClass.", field="lifecycle.rule.action.storageClass")
            if not rule.get("condition"):
                raise invalid_argument("A lifecycle rule needs a condition.", field="lifecycle.rule.condition")
        for key, value in (b.get("labels") or {}).items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", value or ""):
                raise invalid_argument(f"Invalid label {key}={value}.", field="labels")

    # -- buckets ----------------------------------------------------------------------------

    @handles("storage.buckets.insert")
    def insert(self, req: Request) -> dict:
        project = req.get("project")
        body = copy.deepcopy(req.body or {})
        name = body.get("name") or ""
        if not _BUCKET.fullmatch(name) or ".." in name or name.startswith("goog"):
            raise _err(400, "Invalid bucket name: '%s'" % name, "invalid")
        if name in self.state:
            if self.state[name]["_project"] == project:
                raise _err(409, "Your previous request to create the named bucket succeeded and "
                           "you already own it.", "conflict")
            raise _err(409, "The requested bucket name is not available. The bucket namespace "
                       "is shared by all users of the system. Please select a different name "
                       "and try again.", "conflict")
        location = (body.get("location") or "US").upper()
        ltype = "multi-region" if location in MULTI_REGIONS else (
            "dual-region" if location in DUAL_REGIONS else "region")
        stamp = now()
        bucket = {
            "kind": "storage#bucket",
            "id": name,
            "selfLink": f"{_BASE}/b/{name}",
            "projectNumber": project_number(project),
            "name": name,
            "timeCreated": stamp,
            "updated": stamp,
            "metageneration": "1",
            "location": location,
            "locationType": ltype,
            "storageClass": body.get("storageClass") or "STANDARD",
            "rpo": "DEFAULT",
            "etag": self._etag(1),
            "_project": project,
        }
        for key, value in body.items():
            if key not in ("name", "location", "id", "kind", "projectNumber", "metageneration",
                           "timeCreated", "updated", "etag", "selfLink"):
                bucket[key] = value
        self._normalize(bucket)
        self.state[name] = bucket
        self.objects[name] = {}
        self.iam.set(name, {"bindings": [
            {"role": "roles/storage.legacyBucketOwner",
             "members": [f"projectEditor:{project}", f"projectOwner:{project}"]},
            {"role": "roles/storage.legacyBucketReader", "members": [f"projectViewer:{project}"]},
        ]})
        return self._public(bucket)

    @handles("storage.buckets.get")
    def get(self, req: Request) -> dict:
        bucket = self.bucket(req.get("bucket"))
        self._preconditions(req, bucket)
        return self._public(bucket)

    @handles("storage.buckets.list")
    def list(self, req: Request) -> dict:
        project = req.get("project")
        prefix = req.get("prefix") or ""
        items = [self._public(b) for n, b in sorted(self.state.items())
                 if b["_project"] == project and n.startswith(prefix)]
        items, token = paginate(items, req.get("maxResults"), req.get("pageToken"))
        out = {"kind": "storage#buckets"}
        if items:
            out["items"] = items
        if token:
            out["nextPageToken"] = token
        return out

    @handles("storage.buckets.patch", "storage.buckets.update")
    def patch(self, req: Request) -> dict:
        bucket = self.bucket(req.get("bucket"))
        self._preconditions(req, bucket)
        body = copy.deepcopy(req.body or {})
        location = body.get("location")
        if location and location.upper() != bucket["location"]:
            raise _err(400, "The bucket location cannot be changed.", "invalid")
        new = copy.deepcopy(bucket)
        body = {k: v for k, v in body.items() if k not in ("name", "location", "id", "kind",
                "projectNumber", "metageneration", "timeCreated", "updated", "etag", "selfLink",
                "locationType")}
        if req.method_id.endswith(".update"):
            for key in [k for k in new if k not in ("name", "location", "id", "kind",
                        "projectNumber", "metageneration", "timeCreated", "updated", "etag",
                        "selfLink", "locationType", "rpo", "storageClass") and not k.startswith("_")]:
                new.pop(key)
        ubla = ((body.get("iamConfiguration") or {}).get("uniformBucketLevelAccess"))
        if ubla is not None:
            body["iamConfiguration"].pop("bucketPolicyOnly", None)
            new.get("iamConfiguration", {}).pop("bucketPolicyOnly", None)
        deep_merge(new, body)
        self._normalize(new)
        meta = int(bucket["metageneration"]) + 1
        new["metageneration"] = str(meta)
        new["etag"] = self._etag(meta)
        new["updated"] = now()
        self.state[bucket["name"]] = new
        return self._public(new)

    @handles("storage.buckets.delete")
    def delete(self, req: Request):
        bucket = self.bucket(req.get("bucket"))
        self._preconditions(req, bucket)
        if self.objects.get(bucket["name"]):
            raise _err(409, "The bucket you tried to delete is not empty.", "conflict")
        del self.state[bucket["name"]]
        self.objects.pop(bucket["name"], None)
        self.iam.delete(bucket["name"])
        return None

    @handles("storage.buckets.getIamPolicy")
    def get_iam_policy(self, req: Request) -> dict:
        name = self.bucket(req.get("bucket"))["name"]
        return self._policy(name, self.iam.get(name))

    @handles("storage.buckets.setIamPolicy")
    def set_iam_policy(self, req: Request) -> dict:
        bucket = self.bucket(req.get("bucket"))
        policy = req.body or {}
        if bucket["iamConfiguration"]["publicAccessPrevention"] == "enforced":
            for b in policy.get("bindings", []) or []:
                if {"allUsers", "allAuthenticatedUsers"} & set(b.get("members", [])):
                    raise _err(412, "One or more users named in the policy do not belong to a "
                               "permitted customer, perhaps due to an organization policy.",
                               "conditionNotMet")
        return self._policy(bucket["name"], self.iam.set(bucket["name"], policy))

    @staticmethod
    def _policy(name: str, policy: dict) -> dict:
        return {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{name}", **policy}

    # -- objects ----------------------------------------------------------------------------

    def put_object(self, bucket: str, name: str, data: bytes = b"", content_type: str = "application/octet-stream") -> dict:
        """For tests, and the upload handler: store an object."""
        b = self.bucket(bucket)
        gen = str(int(now()[:4]) * 10**12 + len(self.data) + 1)
        obj = {"kind": "storage#object", "id": f"{bucket}/{name}/{gen}", "name": name,
               "bucket": bucket, "generation": gen, "metageneration": "1",
               "contentType": content_type, "size": str(len(data)),
               "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
               "timeCreated": now(), "updated": now(), "storageClass": b["storageClass"],
               "selfLink": f"{_BASE}/b/{bucket}/o/{name}", "etag": "CAE="}
        self.objects.setdefault(bucket, {})[name] = obj
        self.data[(bucket, name)] = data
        return dict(obj)

    @handles("storage.objects.insert")
    def insert_object(self, req: Request) -> dict:
        headers = {k.lower(): v for k, v in req.headers.items()}
        ctype = headers.get("content-type") or "application/octet-stream"
        meta, data = dict(req.body or {}), req.raw_body
        upload = req.get("uploadType")
        if upload == "multipart":
            meta, data, ctype = _multipart(ctype, req.raw_body)
        elif upload == "resumable":
            raise _err(501, "The fake does not implement resumable uploads; use a multipart "
                       "upload (small files) or put_object().", "notImplemented")
        elif not upload:
            ctype = meta.get("contentType") or "application/octet-stream"
        name = req.get("name") or meta.get("name")
        if not name:
            raise _err(400, "Required object name is missing.", "required")
        if req.get("ifGenerationMatch") == "0" and name in self.objects.get(req.get("bucket"), {}):
            raise _err(412, "At least one of the pre-conditions you specified did not hold.",
                       "conditionNotMet")
        return self.put_object(req.get("bucket"), name, data, meta.get("contentType") or ctype)

    def _object(self, req: Request) -> dict:
        self.bucket(req.get("bucket"))
        obj = self.objects.get(req.get("bucket"), {}).get(req.get("object"))
        if obj is None:
            raise _err(404, "No such object: %s/%s" % (req.get("bucket"), req.get("object")), "notFound")
        return obj

    @handles("storage.objects.get")
    def get_object(self, req: Request):
        obj = self._object(req)
        if req.get("alt") == "media":
            return 200, self.data[(obj["bucket"], obj["name"])]
        return dict(obj)

    @handles("storage.objects.list")
    def list_objects(self, req: Request) -> dict:
        self.bucket(req.get("bucket"))
        prefix = req.get("prefix") or ""
        delimiter = req.get("delimiter")
        items, prefixes = [], set()
        for n, o in sorted(self.objects.get(req.get("bucket"), {}).items()):
            if not n.startswith(prefix):
                continue
            rest = n[len(prefix):]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
            else:
                items.append(dict(o))
        items, token = paginate(items, req.get("maxResults"), req.get("pageToken"))
        out = {"kind": "storage#objects"}
        if items:
            out["items"] = items
        if prefixes:
            out["prefixes"] = sorted(prefixes)
        if token:
            out["nextPageToken"] = token
        return out

    @handles("storage.objects.delete")
    def delete_object(self, req: Request):
        obj = self._object(req)
        del self.objects[obj["bucket"]][obj["name"]]
        self.data.pop((obj["bucket"], obj["name"]), None)
        return None
