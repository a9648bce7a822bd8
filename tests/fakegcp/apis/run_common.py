"""Names, limits and helpers shared by the Cloud Run services and jobs modules."""

from __future__ import annotations

import hashlib
import re

from ..core.api import now

_ID = re.compile(r"[a-z]([-a-z0-9]{0,47}[a-z0-9])?")
_ENV = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_RESERVED_ENV = {"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION", "CLOUD_RUN_JOB",
                 "CLOUD_RUN_EXECUTION", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_ATTEMPT",
                 "CLOUD_RUN_TASK_COUNT"}
# Fields a client sets on a service; everything else is output only and ignored on input.
SERVICE_INPUT = ("description", "labels", "annotations", "client", "clientVersion", "ingress",
                 "launchStage", "binaryAuthorization", "template", "traffic", "scaling",
                 "defaultUriDisabled", "invokerIamDisabled", "customAudiences", "iapEnabled",
                 "multiRegionSettings", "buildConfig", "threatDetectionEnabled")
JOB_INPUT = ("labels", "annotations", "client", "clientVersion", "launchStage",
             "binaryAuthorization", "template", "startExecutionToken", "runExecutionToken")


def _suffix(*parts: str, n: int = 3) -> str:
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return "".join(chr(ord("a") + int(digest[i:i + 2], 16) % 26) for i in range(0, 2 * n, 2))


def _ready(kind: str = "Ready") -> dict:
    return {"type": kind, "state": "CONDITION_SUCCEEDED", "lastTransitionTime": now()}
