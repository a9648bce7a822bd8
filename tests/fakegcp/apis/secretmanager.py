"""Secret Manager v1: secrets (create/get/list/patch/delete), versions (add, access with the
"latest" alias, get, list, disable, enable, destroy) and secret IAM policies.

As in Google, resource names come back with the project NUMBER (projects/123.../secrets/x) even
when the request used the project id. Payloads are checked against dataCrc32c when given.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re

import google_crc32c

from ..core.api import ApiModule, IamPolicies, Request, apply_mask, handles, new_id, now, project_number
from ..core.errors import GcpError, already_exists, failed_precondition, invalid_argument

_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")


class SecretManager(ApiModule):
    name = "secretmanager"
    versions = ("v1",)
    service = "secretmanager.googleapis.com"
    title = "Secret Manager API"

    def reset(self) -> None:
        self.state: dict[str, dict] = {}  # "projects/<number>/secrets/<id>" -> Secret
        self.versions_of: dict[str, list[dict]] = {}  # secret name -> versions (with payload)
        self.iam = IamPolicies(member_check=self.fake.check_member)

    def snapshot(self) -> dict:
        return {"secrets": self.state, "iam": self.iam.policies,
                "versions": {n: [v["state"] for v in vs] for n, vs in self.versions_of.items()}}

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def canonical(name: str) -> str:
        parts = name.split("/")
        parts[1] = project_number(parts[1])
        return "/".join(parts)

    def has_secret(self, project: str, ref: str) -> bool:
        name = ref if ref.startswith("projects/") else f"projects/{project}/secrets/{ref}"
        return self.canonical(name) in self.state

    def secret(self, name: str) -> dict:
        key = self.canonical(name)
        if key not in self.state:
            raise GcpError(404, f"Secret [{key}] not found or has no versions.", "NOT_FOUND")
        return self.state[key]

    def payload_of(self, project: str, secret_id: str, version: str = "latest") -> bytes:
        """For tests: the stored bytes (decoded)."""
        v = self._version(f"projects/{project}/secrets/{secret_id}/versions/{version}")
        return base64.b64decode(v["_data"])

    @staticmethod
    def _public(v: dict) -> dict:
        return {k: copy.deepcopy(val) for k, val in v.items() if not k.startswith("_")}

    def _version(self, name: str) -> dict:
        secret_name, _, version = self.canonical(name).partition("/versions/")
        self.secret(secret_name)
        versions = self.versions_of.get(secret_name, [])
        if version == "latest":
            live = [v for v in versions if v["state"] != "DESTROYED"]
            if not live:
                raise GcpError(404, f"Secret [{secret_name}] not found or has no versions.", "NOT_FOUND")
            return live[-1]
        for v in versions:
            if v["name"].endswith(f"/versions/{version}"):
                return v
        raise GcpError(404, f"Secret Version [{secret_name}/versions/{version}] not found.", "NOT_FOUND")

    # -- secrets ----------------------------------------------------------------------------

    @handles("secretmanager.projects.secrets.create")
    def create(self, req: Request) -> dict:
        sid = req.get("secretId") or ""
        if not _ID.fullmatch(sid):
            raise invalid_argument("secret_id must be 1-255 letters, digits, '-' or '_'.", field="secret_id")
        name = self.canonical(f"{req.get('parent')}/secrets/{sid}")
        if name in self.state:
            raise already_exists(f"Secret [{name}]")
        body = copy.deepcopy(req.body or {})
        replication = body.get("replication") or {}
        if not replication.get("automatic") and replication.get("automatic") != {} and not replication.get("userManaged"):
            raise invalid_argument("Secret.replication is required.", field="secret.replication")
        secret = {k: v for k, v in body.items() if k not in ("name", "createTime", "etag")}
        secret.update({"name": name, "createTime": now(), "etag": f'"{new_id()[:14]}"'})
        self.state[name] = secret
        self.versions_of[name] = []
        return copy.deepcopy(secret)

    @handles("secretmanager.projects.secrets.get")
    def get(self, req: Request) -> dict:
        return copy.deepcopy(self.secret(req.get("name")))

    @handles("secretmanager.projects.secrets.list")
    def list(self, req: Request) -> dict:
        prefix = self.canonical(req.get("parent")) + "/secrets/"
        items = [copy.deepcopy(s) for n, s in sorted(self.state.items()) if n.startswith(prefix)]
        out = {"totalSize": len(items)}
        if items:
            out["secrets"] = items
        return out

    @handles("secretmanager.projects.secrets.patch")
    def patch(self, req: Request) -> dict:
        secret = self.secret(req.get("name"))
        mask = req.get("updateMask")
        if not mask:
            raise invalid_argument("update_mask is required.", field="update_mask")
        body = {k: v for k, v in (req.body or {}).items() if k not in ("name", "createTime")}
        if "replication" in mask.split(","):
            raise invalid_argument("replication cannot be updated.", field="update_mask")
        apply_mask(secret, body, mask)
        secret["etag"] = f'"{new_id()[:14]}"'
        return copy.deepcopy(secret)

    @handles("secretmanager.projects.secrets.delete")
    def delete(self, req: Request) -> dict:
        secret = self.secret(req.get("name"))
        etag = req.get("etag")
        if etag and etag != secret["etag"]:
            raise GcpError(409, "The etag does not match the current etag.", "ABORTED")
        del self.state[secret["name"]]
        self.versions_of.pop(secret["name"], None)
        self.iam.delete(secret["name"])
        return {}

    # -- versions ---------------------------------------------------------------------------

    @handles("secretmanager.projects.secrets.addVersion")
    def add_version(self, req: Request) -> dict:
        secret = self.secret(req.get("parent"))
        payload = (req.body or {}).get("payload") or {}
        data = payload.get("data")
        if data is None:
            raise invalid_argument("payload.data is required.", field="payload.data")
        try:
            raw = base64.b64decode(data, validate=True)
        except binascii.Error:
            raise invalid_argument("payload.data is not valid base64.", field="payload.data")
        if len(raw) > 65536:
            raise invalid_argument("payload.data exceeds 64 KiB.", field="payload.data")
        crc = payload.get("dataCrc32c")
        if crc is not None and int(crc) != google_crc32c.value(raw):
            raise invalid_argument("Checksum mismatch: payload.dataCrc32c does not match the "
                                   "data.", field="payload.data_crc32c")
        versions = self.versions_of[secret["name"]]
        v = {"name": f"{secret['name']}/versions/{len(versions) + 1}", "createTime": now(),
             "state": "ENABLED", "replicationStatus": {"automatic": {}}, "etag": f'"{new_id()[:14]}"',
             "clientSpecifiedPayloadChecksum": crc is not None, "_data": data}
        versions.append(v)
        return self._public(v)

    @handles("secretmanager.projects.secrets.versions.access")
    def access(self, req: Request) -> dict:
        v = self._version(req.get("name"))
        if v["state"] != "ENABLED":
            raise failed_precondition(f"Secret Version [{v['name']}] is in {v['state']} state.")
        raw = base64.b64decode(v["_data"])
        return {"name": v["name"], "payload": {"data": v["_data"],
                                               "dataCrc32c": str(google_crc32c.value(raw))}}

    @handles("secretmanager.projects.secrets.versions.get")
    def get_version(self, req: Request) -> dict:
        return self._public(self._version(req.get("name")))

    @handles("secretmanager.projects.secrets.versions.list")
    def list_versions(self, req: Request) -> dict:
        secret = self.secret(req.get("parent"))
        items = [self._public(v) for v in reversed(self.versions_of[secret["name"]])]
        flt = (req.get("filter") or "").replace(" ", "")
        if flt.startswith("state:"):
            items = [v for v in items if v["state"] == flt.split(":", 1)[1]]
        out = {"totalSize": len(items)}
        if items:
            out["versions"] = items
        return out

    def _set_state(self, req: Request, state: str) -> dict:
        v = self._version(req.get("name"))
        if v["state"] == "DESTROYED":
            raise failed_precondition(f"Secret Version [{v['name']}] is in DESTROYED state.")
        v["state"] = state
        if state == "DESTROYED":
            v["destroyTime"] = now()
            v["_data"] = ""
        return self._public(v)

    @handles("secretmanager.projects.secrets.versions.disable")
    def disable(self, req: Request) -> dict:
        return self._set_state(req, "DISABLED")

    @handles("secretmanager.projects.secrets.versions.enable")
    def enable(self, req: Request) -> dict:
        return self._set_state(req, "ENABLED")

    @handles("secretmanager.projects.secrets.versions.destroy")
    def destroy(self, req: Request) -> dict:
        return self._set_state(req, "DESTROYED")

    # -- IAM --------------------------------------------------------------------------------

    @handles("secretmanager.projects.secrets.getIamPolicy")
    def get_iam_policy(self, req: Request) -> dict:
        return self.iam.get(self.secret(req.get("resource"))["name"])

    @handles("secretmanager.projects.secrets.setIamPolicy")
    def set_iam_policy(self, req: Request) -> dict:
        return self.iam.set(self.secret(req.get("resource"))["name"],
                            (req.body or {}).get("policy") or {})
