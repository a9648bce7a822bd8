"""`relocate-artifacts`: old experiments' gs:// artifact locations, served by the server."""

from __future__ import annotations

import click

from mlflow_gcp.cli import options


@click.command("relocate-artifacts")
@options.config_options
@options.yes_option
@click.option("--apply", "apply", is_flag=True,
              help="Rewrite them (after an on-demand backup); without it, only count them.")
def relocate_cmd(cfg_source, yes: bool, apply: bool) -> None:
    """Rewrite artifact locations under the bucket (gs://BUCKET/...) to mlflow-artifacts:/..., so
    clients that may only invoke the server can read old experiments' artifacts."""
    from mlflow_gcp.cli.deploy import _context
    from mlflow_gcp.ops import relocate

    cfg = cfg_source.load()
    if apply:
        options.confirm(f"Back up {cfg.database.instance}, then rewrite the artifact locations under "
                        f"gs://{cfg.bucket_name}/?", yes)
    result = relocate.relocate(_context(cfg), apply=apply)
    click.echo(result.summary or f"done (execution {result.execution}); its count is in "
               "`mlflow-gcp logs --since 10m`")


commands = [relocate_cmd]
