"""IAM v1: service accounts (create/get/list/patch/delete), their keys, and their IAM policies."""

from __future__ import annotations

import base64
import hashlib
import json
import re

from ..core.api import ApiModule, IamPolicies, Request, handles, now, paginate
from ..core.errors import GcpError, invalid_argument, not_found, org_policy_violation

_ACCOUNT_ID = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


class Iam(ApiModule):
    name = "iam"
    versions = ("v1",)
    service = "iam.googleapis.com"
    title = "Identity and Access Management (IAM) API"

    def reset(self) -> None:
        self.state: dict[str, dict] = {}  # email -> ServiceAccount
        self.keys: dict[str, dict] = {}  # key name -> ServiceAccountKey (without private data)
        self.iam = IamPolicies(member_check=self.fake.check_member)  # key: email
        self.created_at: dict[str, float] = {}  # email -> fake clock time (see FakeGcp.account_visible)

    def snapshot(self) -> dict:
        return {"accounts": self.state, "keys": sorted(k.split("/keys/")[0] for k in self.keys),
                "iam": self.iam.policies}

    def _lookup(self, name: str) -> dict:
        # projects/{p|-}/serviceAccounts/{email|uniqueId}
        ref = name.split("/")[-1]
        for sa in self.state.values():
            if ref in (sa["email"], sa["uniqueId"]):
                return sa
        raise GcpError(404, f"Service account {name} does not exist.", "NOT_FOUND", "notFound")

    @handles("iam.projects.serviceAccounts.create")
    def create(self, req: Request) -> dict:
        project = req.get("name").split("/")[1]
        body = req.body or {}
        account_id = body.get("accountId") or ""
        if not (6 <= len(account_id) <= 30 and _ACCOUNT_ID.fullmatch(account_id)):
            raise invalid_argument(
                "Invalid account ID. It must be 6-30 characters of lowercase letters, digits or "
                "hyphens, starting with a letter.", field="account_id")
        email = f"{account_id}@{project}.iam.gserviceaccount.com"
        if email in self.state:
            raise GcpError(409, f"Service account {account_id} already exists within project "
                           f"projects/{project}.", "ALREADY_EXISTS", "alreadyExists")
        given = body.get("serviceAccount") or {}
        unique = str(100000000000000000000 + int(hashlib.sha256(email.encode()).hexdigest(), 16) % 10**20)
        sa = {
            "name": f"projects/{project}/serviceAccounts/{email}",
            "projectId": project,
            "uniqueId": unique,
            "email": email,
            "etag": "MDEwMjE5MjA=",
            "oauth2ClientId": unique,
        }
        for field in ("displayName", "description"):
            if given.get(field):
                sa[field] = given[field]
        self.state[email] = sa
        self.created_at[email] = self.fake.now()
        return dict(sa)

    @handles("iam.projects.serviceAccounts.get")
    def get(self, req: Request) -> dict:
        return dict(self._lookup(req.get("name")))

    @handles("iam.projects.serviceAccounts.list")
    def list(self, req: Request) -> dict:
        project = req.get("name").split("/")[1]
        accounts = [dict(sa) for sa in sorted(self.state.values(), key=lambda s: s["email"])
                    if project == "-" or sa["projectId"] == project]
        accounts, token = paginate(accounts, req.get("pageSize"), req.get("pageToken"), 20)
        out = {"accounts": accounts} if accounts else {}
        if token:
            out["nextPageToken"] = token
        return out

    @handles("iam.projects.serviceAccounts.patch")
    def patch(self, req: Request) -> dict:
        sa = self._lookup(req.get("name"))
        body = req.body or {}
        given = body.get("serviceAccount") or {}
        mask = body.get("updateMask") or ""
        for field in [f.strip() for f in mask.split(",") if f.strip()]:
            if field not in ("displayName", "description"):
                raise invalid_argument(f"Invalid update mask field: {field}", field="update_mask")
            if given.get(field):
                sa[field] = given[field]
            else:
                sa.pop(field, None)
        return dict(sa)

    @handles("iam.projects.serviceAccounts.delete")
    def delete(self, req: Request) -> dict:
        sa = self._lookup(req.get("name"))
        del self.state[sa["email"]]
        self.iam.delete(sa["email"])
        self.fake.account_deleted(sa["email"], sa["uniqueId"])
        for k in [k for k in self.keys if f"/serviceAccounts/{sa['email']}/" in k]:
            del self.keys[k]
        return {}

    @handles("iam.projects.serviceAccounts.getIamPolicy")
    def get_iam_policy(self, req: Request) -> dict:
        return self.iam.get(self._lookup(req.get("resource"))["email"])

    @handles("iam.projects.serviceAccounts.setIamPolicy")
    def set_iam_policy(self, req: Request) -> dict:
        email = self._lookup(req.get("resource"))["email"]
        return self.iam.set(email, (req.body or {}).get("policy") or {})

    # -- keys -----------------------------------------------------------------------------

    @handles("iam.projects.serviceAccounts.keys.create")
    def create_key(self, req: Request) -> dict:
        sa = self._lookup(req.get("name"))
        if "iam.disableServiceAccountKeyCreation" in self.fake.org_policies:
            email = sa["email"]
            raise org_policy_violation(
                "Key creation is not allowed on this service account.", "iam.disableServiceAccountKeyCreation",
                "Key creation is not allowed on this service account.",
                f"projects/{sa['projectId']}/serviceAccounts/{email}?configvalue={email.replace('@', '%40')}")
        key_id = hashlib.sha1(f"{sa['email']}/{len(self.keys)}/{now()}".encode()).hexdigest()
        key = {
            "name": f"projects/{sa['projectId']}/serviceAccounts/{sa['email']}/keys/{key_id}",
            "validAfterTime": now(),
            "validBeforeTime": "9999-12-31T23:59:59Z",
            "keyAlgorithm": "KEY_ALG_RSA_2048",
            "keyOrigin": "GOOGLE_PROVIDED",
            "keyType": "USER_MANAGED",
        }
        self.keys[key["name"]] = key
        # Not a usable key: a placeholder credentials file with the right fields.
        creds = {"type": "service_account", "project_id": sa["projectId"], "private_key_id": key_id,
                 "private_key": "-----BEGIN PRIVATE KEY-----\nFAKE\n-----END PRIVATE KEY-----\n",
                 "client_email": sa["email"], "client_id": sa["uniqueId"],
                 "token_uri": "https://oauth2.googleapis.com/token"}
        return {**key, "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE",
                "privateKeyData": base64.b64encode(json.dumps(creds).encode()).decode()}

    @handles("iam.projects.serviceAccounts.keys.list")
    def list_keys(self, req: Request) -> dict:
        sa = self._lookup(req.get("name"))
        types = req.get("keyTypes") or []
        types = types if isinstance(types, list) else [types]
        keys = [dict(k) for name, k in self.keys.items()
                if f"/serviceAccounts/{sa['email']}/" in name
                and (not types or k["keyType"] in types)]
        return {"keys": keys} if keys else {}

    @handles("iam.projects.serviceAccounts.keys.get")
    def get_key(self, req: Request) -> dict:
        key = self._key(req.get("name"))
        return dict(key)

    def _key(self, name: str) -> dict:
        key_id = name.rsplit("/", 1)[-1]
        for kname, key in self.keys.items():
            if kname.endswith(f"/keys/{key_id}"):
                return key
        raise not_found(f"Service account key {name}")

    @handles("iam.projects.serviceAccounts.keys.delete")
    def delete_key(self, req: Request) -> dict:
        key = self._key(req.get("name"))
        del self.keys[key["name"]]
        return {}
