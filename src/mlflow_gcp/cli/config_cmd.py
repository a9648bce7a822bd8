"""`mlflow-gcp config`: show and check the effective configuration."""

from __future__ import annotations

import click

from mlflow_gcp.cli.options import config_options, emit_json, json_option


@click.group("config")
def config_group() -> None:
    """Show or check the deployment configuration."""


def _image(cfg) -> str:
    from mlflow_gcp.errors import MlflowGcpError

    try:
        return cfg.image_uri
    except MlflowGcpError as err:  # installed without its source: only service.image can deploy
        return f"unknown ({err.message})"


@config_group.command("show")
@config_options
@json_option
def show(cfg_source, as_json: bool) -> None:
    """Print the effective configuration (file, environment and flags merged)."""
    cfg = cfg_source.load()
    data = cfg.model_dump()
    data["derived"] = {
        "bucket": cfg.bucket_name,
        "image": _image(cfg),
        "server_service_account": cfg.server_service_account_email,
        "instance_connection_name": cfg.instance_connection_name,
        "db_password_secret": cfg.secret_id,
    }
    if as_json:
        emit_json(data)
    else:
        from mlflow_gcp.config import to_toml

        click.echo(to_toml(cfg), nl=False)
        for key, value in data["derived"].items():
            click.echo(f"# {key}: {value}")


@config_group.command("check")
@config_options
def check(cfg_source) -> None:
    """Validate the configuration and the connection budget; no API calls."""
    cfg = cfg_source.load(require_file=False)
    pool = cfg.pool()
    click.echo(
        f"{cfg_source.file}: valid. {cfg.service.max_instances} instance(s) x "
        f"{cfg.service.workers} worker(s) fit {cfg.database.tier} "
        f"({cfg.database.max_connections} connections; pool {pool.pool_size}+{pool.max_overflow} "
        "per engine)."
    )


commands = [config_group]
