"""Run the real gcloud CLI against the fake (standalone or in-process) and parse its JSON.

    from tests.fakegcp.gcloud import run_gcloud, gcloud_available
    instance = run_gcloud(fake.url, "sql", "instances", "describe", "mlflow-db", project="p")

Everything goes through CLOUDSDK_* environment variables and a throwaway CLOUDSDK_CONFIG, so
the user's gcloud configuration and credentials are never read or touched:
- api_endpoint_overrides/<gcloud api name> = <root>/<fake api>/<client base path>. gcloud uses
  an override verbatim when it has a path, so the override must include the base path of
  gcloud's own (apitools) client: "storage/v1/" for storage; "" for the others, whose method
  paths carry the version (sqladmin's v1beta4 paths are "sql/v1beta4/...", which the fake serves).
- auth/access_token_file = a file holding a fake token (sent as "Authorization: Bearer"; the
  fake ignores it), so gcloud needs no login and no network;
- usage reporting, update checks and prompts are off.
- the fake is also gcloud's HTTP proxy: `gcloud run` derives a regional endpoint by prefixing
  the host (http://europe-west1-127.0.0.1:PORT/run/), which only resolves through a proxy; the
  fake reads the region from the Host header and serves Cloud Run v1 (Knative) reads and the
  writes of `gcloud run deploy` on its v2 state. It also means an https call to a real Google host (an API without an override) is
  refused by the fake rather than sent to the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from urllib.parse import urlsplit

from mlflow_gcp.redaction import redact

# gcloud's api_endpoint_overrides property name -> the suffix after the fake root.
OVERRIDES = {
    "sql": "sqladmin/",
    "storage": "storage/storage/v1/",
    "secretmanager": "secretmanager/",
    "iam": "iam/",
    "iamcredentials": "iamcredentials/",
    "cloudresourcemanager": "cloudresourcemanager/",
    "serviceusage": "serviceusage/",
    "artifactregistry": "artifactregistry/",
    "cloudbuild": "cloudbuild/",
    "logging": "logging/",
    "cloudscheduler": "cloudscheduler/",
    "run": "run/",
}


class GcloudError(RuntimeError):
    def __init__(self, args: list[str], code: int, stderr: str):
        # The arguments may carry passwords (sql users create --password, a DB_URI env var).
        super().__init__(redact(f"gcloud {' '.join(args)} exited {code}: {stderr.strip()[-2000:]}"))
        self.code = code
        self.stderr = stderr


def gcloud_path() -> str | None:
    return shutil.which("gcloud")


def gcloud_available() -> bool:
    return gcloud_path() is not None


def gcloud_env(fake_url: str, config_dir: str, project: str | None = None) -> dict[str, str]:
    """The environment that points gcloud at the fake (and at nothing else of the user's)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CLOUDSDK_") and k not in ("GOOGLE_APPLICATION_CREDENTIALS",
                                                          "GOOGLE_CLOUD_PROJECT")}
    token_file = os.path.join(config_dir, "fake-access-token")
    if not os.path.exists(token_file):
        with open(token_file, "w") as fh:
            fh.write("fake-access-token\n")
    root = fake_url.rstrip("/")
    env.update({
        "CLOUDSDK_CONFIG": config_dir,
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": token_file,
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_SHOW_STRUCTURED_LOGS": "never",
        "CLOUDSDK_PROXY_TYPE": "http",
        "CLOUDSDK_PROXY_ADDRESS": urlsplit(root).hostname,
        "CLOUDSDK_PROXY_PORT": str(urlsplit(root).port or 80),
    })
    if project:
        env["CLOUDSDK_CORE_PROJECT"] = project
    for name, suffix in OVERRIDES.items():
        env[f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{name.upper()}"] = f"{root}/{suffix}"
    return env


def run_gcloud(fake_url: str, *args: str, project: str | None = None, timeout: float = 120,
               config_dir: str | None = None, parse_json: bool = True):
    """Run `gcloud ARGS` against the fake; return the parsed JSON (or stdout if parse_json=False).

    Adds --format=json unless a --format is given. Raises GcloudError on a non-zero exit."""
    binary = gcloud_path()
    if binary is None:
        raise FileNotFoundError("gcloud is not installed")
    argv = list(args)
    if parse_json and not any(a.startswith("--format") for a in argv):
        argv.append("--format=json")
    own_dir = None
    if config_dir is None:
        own_dir = tempfile.TemporaryDirectory(prefix="gcloud-fake-")
        config_dir = own_dir.name
    try:
        proc = subprocess.run([binary, *argv], env=gcloud_env(fake_url, config_dir, project),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        if own_dir is not None:
            own_dir.cleanup()
    if proc.returncode != 0:
        raise GcloudError(argv, proc.returncode, proc.stderr)
    return json.loads(proc.stdout or "null") if parse_json else proc.stdout
