"""googleapiclient clients pointed at a fake root, exactly as the tool builds them:
client_options api_endpoint = <root>/<api>/<servicePath>, anonymous credentials, static discovery."""

from __future__ import annotations

from google.auth.credentials import AnonymousCredentials
from googleapiclient import discovery as gdiscovery

from .core import discovery


def build_client(root: str, api: str, version: str):
    service_path = discovery.load(api, version)["servicePath"]
    return gdiscovery.build(
        api, version,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"{root.rstrip('/')}/{api}/{service_path}"},
        static_discovery=True,
        cache_discovery=False,
    )
