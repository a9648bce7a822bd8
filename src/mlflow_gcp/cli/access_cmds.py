"""`mlflow-gcp access grant|revoke|list|create-sa`: who may use the private server."""

from __future__ import annotations

import click

from mlflow_gcp.cli import options


def _clients(cfg):
    from mlflow_gcp.gcp.clients import for_config

    return for_config(cfg)


def _render(result, as_json: bool) -> None:
    if as_json:
        options.emit_json({
            "changes": [vars(c) for c in result.changes],
            "warnings": result.warnings, "notes": result.notes,
        })
        return
    for w in result.warnings:
        click.echo(f"Warning: {w}", err=True)
    for c in result.changes:
        click.echo(c.line())
    if not result.changes:
        click.echo("No changes.")
    for n in result.notes:
        click.echo(n)


@click.group("access")
def access_group() -> None:
    """Grant, revoke and list who may use the server; service accounts for jobs."""


@access_group.command("grant")
@click.argument("members", nargs=-1, required=True, metavar="MEMBER...")
@options.config_options
@options.json_option
def grant_cmd(members, cfg_source, as_json: bool) -> None:
    """Let MEMBERs use the server: user:EMAIL, group:EMAIL, serviceAccount:EMAIL, domain:DOMAIN."""
    from mlflow_gcp.ops import access

    cfg = cfg_source.load()
    access.check_members(cfg, list(members))  # bad input: an error before any API call
    _render(access.grant(_clients(cfg), cfg, list(members)), as_json)


@access_group.command("revoke")
@click.argument("members", nargs=-1, required=True, metavar="MEMBER...")
@options.config_options
@options.json_option
def revoke_cmd(members, cfg_source, as_json: bool) -> None:
    """Stop MEMBERs from using the server."""
    from mlflow_gcp.ops import access

    cfg = cfg_source.load()
    _render(access.revoke(_clients(cfg), cfg, list(members)), as_json)


@access_group.command("list")
@options.config_options
@options.json_option
def list_cmd(cfg_source, as_json: bool) -> None:
    """Show who may use the server."""
    from mlflow_gcp.ops import access

    cfg = cfg_source.load()
    rows = access.list_access(_clients(cfg), cfg)
    if not rows and not as_json:
        click.echo("Nobody may invoke the service yet: mlflow-gcp access grant user:YOU@example.com")
        return
    options.table(rows, ["member", "role", "resource"], as_json)


@access_group.command("create-sa")
@click.argument("name")
@click.option("--impersonator", "impersonators", multiple=True, metavar="MEMBER",
              help="Grant MEMBER Token Creator on the account, to impersonate it (repeatable).")
@click.option("--key", "key_file", type=click.Path(dir_okay=False), default=None,
              help="Also write a key file (mode 0600). Keys leak; prefer impersonation.")
@options.config_options
@options.json_option
def create_sa_cmd(name, impersonators, key_file, cfg_source, as_json: bool) -> None:
    """A service account NAME for jobs, allowed to use the server; keyless by default."""
    from mlflow_gcp.ops import access

    cfg = cfg_source.load()
    access.service_account_email(cfg, name)
    result = access.create_service_account(_clients(cfg), cfg, name,
                                           impersonators=list(impersonators), key_file=key_file)
    _render(result, as_json)


commands = [access_group]
