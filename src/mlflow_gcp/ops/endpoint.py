"""The URL of the MLflow server: given by the user, or read from the deployed Cloud Run service.

Lookup order: an explicit URL (`--url`) > the Cloud Run service of the configuration (project,
region and service name from flags, environment or mlflow-gcp.toml). The service lookup needs
Application Default Credentials with run.services.get on the project.
"""

from __future__ import annotations

import urllib.parse

from mlflow_gcp.errors import ConfigError, MlflowGcpError, NotFound

PASS_URL_HINT = "pass --url https://SERVICE-PROJECT_NUMBER.REGION.run.app"


def normalize_url(url: str) -> str:
    """A service URL as the token audience wants it: scheme://host[:port], no trailing slash."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError([("url", f"{url!r} is not an http(s) URL")], hint=PASS_URL_HINT)
    if parts.query or parts.fragment:
        raise ConfigError([("url", "the service URL takes no query or fragment")])
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def service_url(cfg_source, url: str | None = None, clients=None) -> str:
    """The server's URL: `url` when given, else the deployed service's `uri`."""
    if url:
        return normalize_url(url)
    try:
        cfg = cfg_source.load()
    except ConfigError as err:
        raise ConfigError(err.problems, hint=f"or {PASS_URL_HINT}") from err
    try:
        from mlflow_gcp.gcp import clients as clients_mod
        from mlflow_gcp.gcp import run
    except ImportError as err:  # a partial install without the control-plane modules
        raise MlflowGcpError("cannot look up the deployed service here", hint=PASS_URL_HINT) from err
    if clients is None:
        clients = clients_mod.Clients.from_env(cfg.project)
    service = run.get_service(clients, cfg)
    if service is None or not service.uri:
        raise NotFound(
            f"Cloud Run service {cfg.service.name} is not deployed in project {cfg.project}, "
            f"region {cfg.region}",
            hint=f"run `mlflow-gcp up`, or {PASS_URL_HINT}",
        )
    return normalize_url(service.uri)
