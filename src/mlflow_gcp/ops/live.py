"""What the ops commands share: the deployed state read once, the database's paused state, a
health probe that may be pointed at another URL, and writing a changed setting back to the
config file (so the next `up` keeps what `scale`, `lifecycle` or `upgrade` changed)."""

from __future__ import annotations

from pathlib import Path

from mlflow_gcp.errors import MlflowGcpError
from mlflow_gcp.gcp import sql
from mlflow_gcp.ops import health

NOT_DEPLOYED_HINT = "run `mlflow-gcp up` first"


class Paused(MlflowGcpError):
    """The database is stopped (mlflow-gcp pause); work that needs it must wait for resume."""


def is_paused(instance: dict | None) -> bool:
    if not instance:
        return False
    settings = instance.get("settings") or {}
    return settings.get("activationPolicy") == "NEVER" or instance.get("state") == "STOPPED"


def require_running(ctx, doing: str) -> dict:
    """The Cloud SQL instance, or a clear error when it is missing or paused."""
    name = ctx.cfg.database.instance
    inst = sql.get_instance(ctx.clients, name)
    if inst is None:
        raise MlflowGcpError(f"Cloud SQL instance {name} does not exist", hint=NOT_DEPLOYED_HINT)
    if is_paused(inst):
        raise Paused(f"the database {name} is paused; {doing} needs it running",
                     hint="run `mlflow-gcp resume` first")
    return inst


def probe(ctx, url: str | None, service_uri: str | None, *, version: str | None = None) -> health.Health:
    """Health with an ID token: of `url` when given (a custom domain, or a local stand-in),
    else of the service's own URL (skipped under API emulation, where it does not exist); with
    `version`, the MLflow version served must be that one."""
    if url:
        return health.check(url.rstrip("/"), emulated=False, version=version)
    if not service_uri:
        return health.Health(None, "health check skipped: the service has no URL yet")
    return health.check(service_uri, emulated=ctx.clients.emulated, version=version)


def save_settings(config_file: Path, changes: dict[tuple[str, ...], object]) -> bool:
    """Write `changes` (field path -> value) into the TOML config file, keeping everything else in
    it as written: other settings, comments, order, blank lines (tomlkit edits the document in
    place; people annotate their config). False when there is no file (settings then came from
    flags or the environment). The file is never left in a state that would not load."""
    import tomllib

    import tomlkit

    from mlflow_gcp import config as config_mod

    path = Path(config_file)
    if not path.exists():
        return False
    config_mod.read_file(path)  # unreadable or invalid TOML: its own clear error first
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    for keys, value in changes.items():
        node = doc
        for key in keys[:-1]:
            if key not in node:
                if value is None:
                    break  # nothing to remove; and no empty table left behind
                node[key] = tomlkit.table()
            node = node[key]
        else:
            if value is None:
                node.pop(keys[-1], None)
            else:
                node[keys[-1]] = value
    text = tomlkit.dumps(doc)
    config_mod.from_dict(tomllib.loads(text))  # never write a file that would not load
    path.write_text(text, encoding="utf-8")
    return True


def require_latest_traffic(raw: dict, doing: str) -> None:
    """Refuse when traffic is pinned to a revision (after a rolled-back upgrade): a change rolled
    out now would reach a revision that gets no traffic, or the one that was rolled back."""
    pinned = [t.get("revision") for t in raw.get("traffic") or []
              if t.get("percent") and t.get("type") == "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"]
    if pinned:
        raise MlflowGcpError(
            f"traffic is pinned to revision {', '.join(pinned)} (a rolled-back upgrade?); {doing} would not reach it",
            hint="run `mlflow-gcp up` (or a successful `mlflow-gcp upgrade`) first",
        )
