"""Environments for client processes that see only the credentials a test gives them."""

from __future__ import annotations

import os

# Anything that could make google-auth, gcloud or MLflow find real credentials or servers.
_DROP_PREFIXES = ("MLFLOW_GCP_", "MLFLOW_TRACKING_", "GCE_METADATA", "CLOUDSDK_AUTH")
_DROP = {"GOOGLE_APPLICATION_CREDENTIALS", "NO_GCE_CHECK", "MLFLOW_TRACKING_URI"}


def clean_env(base: dict | None = None, **extra: str) -> dict:
    """os.environ without credentials settings, off Google Cloud (no metadata probe), plus extra.

    `NO_GCE_CHECK=true` keeps google-auth from probing 169.254.169.254; pass NO_GCE_CHECK="" and
    GCE_METADATA_HOST/IP to use the local metadata stand-in instead.
    """
    env = {
        k: v for k, v in (os.environ if base is None else base).items()
        if k not in _DROP and not k.startswith(_DROP_PREFIXES)
    }
    env["NO_GCE_CHECK"] = "true"
    # No gcloud fallback unless a test asks for one: point at a binary that does not exist.
    env["MLFLOW_GCP_GCLOUD"] = "/nonexistent/gcloud"
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}
