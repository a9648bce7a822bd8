"""`mlflow-gcp env` and `mlflow-gcp ui`: use the private server from a laptop or a job."""

from __future__ import annotations

import os
import shlex
import threading

import click

from mlflow_gcp.cli.options import config_options

SHELLS = ("sh", "fish", "powershell")
URL_HELP = "Service URL (default: the deployed Cloud Run service of the configuration)."


def _default_shell() -> str:
    if os.name == "nt":
        return "powershell"
    return "fish" if os.path.basename(os.environ.get("SHELL", "")) == "fish" else "sh"


def env_lines(url: str, shell: str) -> list[str]:
    """The lines that point plain MLflow code at the server with the gcp auth plugin."""
    values = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_AUTH": "gcp"}
    if shell == "fish":
        return [f"set -gx {k} {shlex.quote(v)};" for k, v in values.items()] + [
            "# mlflow-gcp env --shell fish | source"
        ]
    if shell == "powershell":
        return [f"$Env:{k} = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in values.items()] + [
            "# mlflow-gcp env --shell powershell | Invoke-Expression"
        ]
    return [f"export {k}={shlex.quote(v)}" for k, v in values.items()] + [
        '# eval "$(mlflow-gcp env)"'
    ]


@click.command("env")
@click.option("--url", default=None, help=URL_HELP)
@click.option("--shell", type=click.Choice(SHELLS), default=None,
              help="Syntax of the lines (default: from $SHELL; sh also suits bash and zsh).")
@config_options
def env_cmd(url: str | None, shell: str | None, cfg_source) -> None:
    """Print the environment for MLflow clients: eval "$(mlflow-gcp env)"."""
    from mlflow_gcp.ops import endpoint

    service = endpoint.service_url(cfg_source, url)
    for line in env_lines(service, shell or _default_shell()):
        click.echo(line)


@click.command("ui")
@click.option("--url", default=None,
              help=URL_HELP.replace("(default:", "(default: $MLFLOW_TRACKING_URI if https, else"))
@click.option("--port", type=click.IntRange(0, 65535), default=5000, show_default=True,
              help="Local port on 127.0.0.1 (0 picks a free one).")
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
@config_options
def ui_cmd(url: str | None, port: int, no_browser: bool, cfg_source) -> None:
    """Open the MLflow UI of the private server through a local authenticated proxy."""
    from mlflow_gcp.client.proxy import UiProxy
    from mlflow_gcp.ops import endpoint

    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not url and tracking_uri.startswith(("https://", "http://")):
        url = tracking_uri
    service = endpoint.service_url(cfg_source, url)
    proxy = UiProxy(service, port)
    proxy.check_token()  # no credentials: say so now, not in the browser
    click.echo(f"MLflow UI of {service} at {proxy.url} (Ctrl-C to stop)")
    if not no_browser:
        import webbrowser

        threading.Timer(0.5, webbrowser.open, args=(proxy.url,)).start()
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        click.echo("Stopped.")


commands = [env_cmd, ui_cmd]
