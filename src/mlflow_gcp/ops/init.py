"""`init`: write a valid mlflow-gcp.toml from flags (and prompts on a terminal)."""

from __future__ import annotations

from pathlib import Path

from mlflow_gcp import config as config_mod
from mlflow_gcp.errors import MlflowGcpError


def write_config(path: Path, cfg: config_mod.Config, *, force: bool) -> Path:
    if path.exists() and not force:
        raise MlflowGcpError(f"{path} already exists", hint="pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_mod.to_toml(cfg), encoding="utf-8")
    return path
