"""The `mlflow-gcp` entry point: registers every command group and turns our errors into one line.

Each command group lives in its own module exposing `commands` (a list of click commands); add the
module's name to COMMAND_MODULES. Heavy libraries are imported inside commands, so `--help` and
`--version` stay fast.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from mlflow_gcp import __version__
from mlflow_gcp.errors import ConfigError, MlflowGcpError

COMMAND_MODULES = [
    "mlflow_gcp.cli.config_cmd",
    "mlflow_gcp.cli.client_cmds",
    "mlflow_gcp.cli.access_cmds",
    "mlflow_gcp.cli.deploy",
    "mlflow_gcp.cli.local",
    "mlflow_gcp.cli.ops_cmds",
    "mlflow_gcp.cli.relocate_cmd",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="mlflow-gcp")
@click.option("--debug", is_flag=True, envvar="MLFLOW_GCP_DEBUG", help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Run a private, durable, cheap MLflow tracking server on Google Cloud, or locally."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _name in COMMAND_MODULES:
    for _command in importlib.import_module(_name).commands:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; our errors become one line on stderr and a non-zero exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="mlflow-gcp", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    except MlflowGcpError as err:
        if debug:
            raise
        if isinstance(err, ConfigError) and len(err.problems) > 1:
            click.echo("Error: invalid configuration:", err=True)
            for line in err.lines():
                click.echo(f"  {line}", err=True)
            if err.hint:
                click.echo(f"  ({err.hint})", err=True)
        else:
            click.echo(f"Error: {err}", err=True)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
