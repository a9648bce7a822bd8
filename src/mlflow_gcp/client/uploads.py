"""MLflow client settings that a server behind Cloud Run needs for artifacts over 32 MiB.

Cloud Run refuses request bodies over 32 MiB, and MLflow's client sends each artifact as one PUT
unless proxied multipart upload is on (it is off by default, and then only from 500 MB). With it
on, the client asks the server for signed part URLs and writes the parts straight to the bucket
(server/artifacts_gcs.py). The gcp auth plugin applies these defaults when MLflow first asks it
for auth, i.e. before any artifact is logged; a value the user set is kept (set
MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=false to get MLflow's single-PUT behaviour back).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Files from 16 MiB up go in parts: half Cloud Run's cap, so no header or encoding overhead can
# push a single PUT over it. Parts keep MLflow's 10 MiB default size.
MULTIPART_MIN_BYTES = 16 * 1024 * 1024
DEFAULTS = {
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
    "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(MULTIPART_MIN_BYTES),
}


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    for name, value in DEFAULTS.items():
        if not environ.get(name, "").strip():
            environ[name] = value
