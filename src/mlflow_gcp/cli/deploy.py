"""`init`, `plan`, `up`, `destroy`: turn mlflow-gcp.toml into a private MLflow server and back.

Parses, calls ops/, renders; no API call is made here directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlflow_gcp.cli import options
from mlflow_gcp.errors import MlflowGcpError, UserAborted

_allow_public = click.option(
    "--allow-public", is_flag=True, help="Confirm access.mode = public: anyone on the internet may use the server."
)


_import_password = click.option(
    "--import-db-password", "import_password", is_flag=True,
    help="Adopting an existing database user: keep its current password (read from the replaced "
    "service's DB_URI, or asked for) in Secret Manager instead of setting a new one. Never printed.",
)


def _ask_password(prompt: str) -> str | None:
    return click.prompt(prompt, hide_input=True, err=True) if sys.stdin.isatty() else None


def _context(cfg, say=click.echo, wait_say=None, import_password: bool = False):
    """The context of one command; its waits are shown through `wait_say` (default: `say`)."""
    from mlflow_gcp.gcp.clients import for_config
    from mlflow_gcp.plan.steps import Context

    progress = options.waiting_progress(wait_say or say)
    clients = for_config(cfg)
    clients.progress = progress  # Google's propagation delays, met inside any call
    ctx = Context(cfg, clients, say=say, progress=progress)
    if import_password:
        ctx.facts.update(import_password=True, ask_password=_ask_password)
    return ctx


def _render_plan(plan, estimate, as_json: bool) -> None:
    if as_json:
        options.emit_json({**plan.as_dict(), "cost": estimate.as_dict()})
        return
    rows = [
        {"action": a.verb, "resource": a.kind, "name": a.name, "details": a.detail if a.verb != "update" else ""}
        for a in plan.actions
    ]
    options.table(rows, ["action", "resource", "name", "details"])
    for a in plan.actions:
        if a.verb == "update" and a.changes:
            click.echo(f"\n~ {a.kind} {a.name}:" + (f" {a.detail}" if a.detail else ""))
            for change in a.changes:
                click.echo(f"    {change}")
    notes = [(a, n) for a in plan.actions for n in a.notes]
    if notes:
        click.echo("\nRead before applying:")
        for a, note in notes:
            click.echo(f"  ! {a.kind} {a.name}: {note}")
    click.echo("")
    click.echo("No changes." if plan.empty else f"{len(plan.changes)} resource(s) to create or change.")
    _render_cost(estimate)


def _render_cost(estimate) -> None:
    click.echo(f"\nEstimated monthly cost: about ${estimate.total:.2f} (USD)")
    for line in estimate.lines:
        click.echo(f"  {line.component:<26} ${line.monthly_usd:>7.2f}  {line.basis}")
    click.echo("  Assumptions: " + "; ".join(estimate.assumptions))


def _load(cfg_source, allow_public: bool):
    from mlflow_gcp.ops import up as up_ops

    cfg = cfg_source.load()
    up_ops.check_config(cfg, allow_public)  # before any API call
    if cfg.access.mode == "public":
        click.echo(f"Warning: {up_ops.PUBLIC_WARNING}", err=True)
    return cfg


@click.command("init")
@options.config_options
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
def init_cmd(cfg_source, force: bool) -> None:
    """Write mlflow-gcp.toml (flags, or prompts on a terminal)."""
    from mlflow_gcp import config as config_mod
    from mlflow_gcp.ops import init as init_ops

    path = Path(cfg_source.file)
    if path.exists() and not force:
        raise MlflowGcpError(f"{path} already exists", hint="pass --force to overwrite it")
    data = dict(cfg_source.overrides)
    if sys.stdin.isatty():
        if "project" not in data:
            data["project"] = click.prompt("Google Cloud project id")
        if "region" not in data:
            data["region"] = click.prompt("Region", default=config_mod.Config.model_fields["region"].default)
    cfg = config_mod.from_dict(data)
    init_ops.write_config(path, cfg, force=force)
    click.echo(f"Wrote {path}. Next: mlflow-gcp plan, then mlflow-gcp up.")


@click.command("plan")
@options.config_options
@options.json_option
@_allow_public
@_import_password
def plan_cmd(cfg_source, as_json: bool, allow_public: bool, import_password: bool) -> None:
    """Show what `up` would create or change, and the monthly cost."""
    from mlflow_gcp.ops import cost
    from mlflow_gcp.ops import up as up_ops

    cfg = _load(cfg_source, allow_public)
    ctx = _context(cfg, say=lambda line: None, import_password=import_password)
    plan = up_ops.make_plan(ctx)
    _render_plan(plan, cost.estimate(cfg), as_json)
    if not as_json:
        from mlflow_gcp.ops import schedule

        click.echo(schedule.plan_line(cfg, schedule.show(ctx, quiet=True)))


@click.command("up")
@options.config_options
@options.yes_option
@_allow_public
@_import_password
def up_cmd(cfg_source, yes: bool, allow_public: bool, import_password: bool) -> None:
    """Create or update the deployment so it matches the config; then print the URL."""
    from mlflow_gcp.ops import cost, health
    from mlflow_gcp.ops import up as up_ops

    cfg = _load(cfg_source, allow_public)
    ctx = _context(cfg, import_password=import_password)
    plan = up_ops.make_plan(ctx)
    if plan.empty:
        click.echo("No changes.")
        result = up_ops.UpResult(plan, service=_service(ctx))
    else:
        _render_plan(plan, cost.estimate(cfg), as_json=False)
        options.confirm(f"Apply these changes to project {cfg.project}?", yes)
        result = up_ops.UpResult(plan)
        try:
            up_ops.apply(ctx, plan, result=result)
        except (MlflowGcpError, KeyboardInterrupt) as err:
            # What was applied before the failure is part of the record too.
            _record(cfg_source, cfg, result, error=str(err) or "interrupted")
            if isinstance(err, KeyboardInterrupt):
                click.echo("Interrupted: run `mlflow-gcp up` again to continue from here.", err=True)
            raise
        click.echo(f"Applied {len(result.applied)} change(s).")
    service = result.service
    _record(cfg_source, cfg, result)
    if service is None or not service.uri:
        click.echo("The service has no URL yet; run `mlflow-gcp up` again in a minute.")
        return
    click.echo(f"\nMLflow is at {service.uri}")
    click.echo(health.check(service.uri, emulated=ctx.clients.emulated).message)
    click.echo("\nOn a client:")
    click.echo(f"  export MLFLOW_TRACKING_URI={service.uri}")
    click.echo("  export MLFLOW_TRACKING_AUTH=gcp")


def _record(cfg_source, cfg, result, error: str | None = None) -> None:
    from mlflow_gcp.ops import history

    service = result.service
    record = {
        "project": cfg.project,
        "changed": [f"{a.verb} {a.kind} {a.name}" for a in result.applied],
        "revision": service.latest_ready_revision if service else None,
        "image": service.image if service else None,
        "image_digest": result.digest or _digest(service),
    }
    if error:
        record["error"] = error
    history.append(cfg_source.file, record)


def _service(ctx):
    from mlflow_gcp.gcp import run

    return run.get_service(ctx.clients, ctx.cfg)


def _digest(service) -> str | None:
    if service and service.image and "@" in service.image:
        return service.image.rsplit("@", 1)[1]
    return None


@click.command("destroy")
@options.config_options
@options.yes_option
@click.option("--confirm", "confirm_project", metavar="PROJECT", help="With --yes: the project id, typed out.")
@click.option("--no-backup", is_flag=True, help="Do not take a final database backup.")
@click.option("--keep-bucket", is_flag=True, help="Keep the artifact bucket and its contents.")
def destroy_cmd(cfg_source, yes: bool, confirm_project: str | None, no_backup: bool, keep_bucket: bool) -> None:
    """Delete the deployment (final database backup first unless --no-backup)."""
    from mlflow_gcp.ops import destroy as destroy_ops

    cfg = cfg_source.load()
    if yes:
        if confirm_project != cfg.project:
            raise UserAborted("destroy needs the project id", hint=f"rerun with --yes --confirm {cfg.project}")
    else:
        if not sys.stdin.isatty():
            raise UserAborted("destroy needs confirmation", hint=f"rerun with --yes --confirm {cfg.project}")
        typed = click.prompt(f"This deletes the MLflow deployment in {cfg.project}. Type the project id to go on")
        if typed.strip() != cfg.project:
            raise UserAborted("the project id did not match; nothing was deleted")
    ctx = _context(cfg)
    result = destroy_ops.destroy(ctx, backup=not no_backup, keep_bucket=keep_bucket)
    if not result.deleted:
        click.echo("Nothing to delete.")
    else:
        click.echo(f"Deleted {len(result.deleted)} resource(s).")
    for item in result.kept:
        click.echo(f"Kept: {item}")


commands = [init_cmd, plan_cmd, up_cmd, destroy_cmd]
