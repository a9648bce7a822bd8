"""`mlflow-gcp access grant|revoke|list|create-sa`: who may use the private server."""

from __future__ import annotations

import click

from mlflow_gcp.cli import options


def _clients(cfg):
    from mlflow_gcp.gcp.clients import for_config

    clients = for_config(cfg)
    clients.progress = options.waiting_progress(lambda line: click.echo(line, err=True))
    return clients


def _echo_lines(lines: list[str], as_json: bool) -> None:
    if as_json:
        options.emit_json({"changes": lines})
        return
    for line in lines:
        click.echo(line)


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
    """Grant, revoke and list who may use the server; service accounts for jobs.

    With --experiment NAME or --model NAME: who may do what inside MLflow (access.permissions),
    through MLflow's permission API as an admin (access.admins)."""


def _mlflow_options(fn):
    fn = click.option("--url", default=None,
                      help="The server's URL (default: the deployed service).")(fn)
    fn = click.option("--model", default=None, metavar="NAME",
                      help="A registered model's permission inside MLflow.")(fn)
    return click.option("--experiment", default=None, metavar="NAME",
                        help="An experiment's permission inside MLflow (not who may reach the server).")(fn)


def _mlflow_api(cfg_source, url, experiment, model):
    from mlflow_gcp.ops import endpoint, permissions

    api = permissions.Api(endpoint.service_url(cfg_source, url))
    return api, permissions.resolve(api, experiment, model)


@access_group.command("grant")
@click.argument("members", nargs=-1, required=True, metavar="MEMBER...")
@_mlflow_options
@click.option("--permission", default=None, metavar="LEVEL",
              help="With --experiment/--model: READ, USE, EDIT, MANAGE or DENY.")
@options.config_options
@options.json_option
def grant_cmd(members, experiment, model, url, permission, cfg_source, as_json: bool) -> None:
    """Let MEMBERs use the server: user:EMAIL, group:EMAIL, serviceAccount:EMAIL, domain:DOMAIN.

    With --experiment/--model and --permission: give MEMBERs that permission on it in MLflow."""
    from mlflow_gcp.ops import access, permissions

    if experiment or model:
        if not permission:
            raise click.UsageError("--permission is required with --experiment/--model")
        permissions.check_permission(permission)
        for m in members:
            permissions.username(m)  # bad input: an error before any call
        api, resource = _mlflow_api(cfg_source, url, experiment, model)
        _echo_lines([permissions.grant(api, m, resource, permission) for m in members], as_json)
        return
    if permission or url:
        raise click.UsageError("--permission and --url go with --experiment or --model")
    cfg = cfg_source.load()
    access.check_members(cfg, list(members))  # bad input: an error before any API call
    _render(access.grant(_clients(cfg), cfg, list(members)), as_json)


@access_group.command("revoke")
@click.argument("members", nargs=-1, required=True, metavar="MEMBER...")
@_mlflow_options
@options.config_options
@options.json_option
def revoke_cmd(members, experiment, model, url, cfg_source, as_json: bool) -> None:
    """Stop MEMBERs from using the server (with --experiment/--model: remove their grant there,
    leaving them the deployment's default permission)."""
    from mlflow_gcp.ops import access, permissions

    if experiment or model:
        for m in members:
            permissions.username(m)
        api, resource = _mlflow_api(cfg_source, url, experiment, model)
        _echo_lines([permissions.revoke(api, m, resource) for m in members], as_json)
        return
    cfg = cfg_source.load()
    _render(access.revoke(_clients(cfg), cfg, list(members)), as_json)


@access_group.command("list")
@_mlflow_options
@options.config_options
@options.json_option
def list_cmd(experiment, model, url, cfg_source, as_json: bool) -> None:
    """Show who may use the server (with --experiment/--model: who may do what there)."""
    from mlflow_gcp.ops import access, permissions

    if experiment or model:
        api, resource = _mlflow_api(cfg_source, url, experiment, model)
        rows = [vars(r) for r in permissions.list_grants(api, resource)]
        options.table(rows, ["member", "permission", "source"], as_json)
        return
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
