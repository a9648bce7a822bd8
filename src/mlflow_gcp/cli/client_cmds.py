"""`mlflow-gcp env` and `mlflow-gcp ui`: use the private server from a laptop or a job."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import click

from mlflow_gcp.cli.options import config_options

SHELLS = ("sh", "fish", "powershell")
URL_HELP = "Service URL (default: the deployed Cloud Run service of the configuration)."
SECRET_NOTE = "the address lets any browser in as you: keep it to yourself."


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
    # The address with the secret is the way in (the proxy refuses any browser without it), so
    # it is printed either way: to open by hand, or in another browser than the default one.
    click.echo(f"MLflow UI of {service} at {proxy.login_url} (Ctrl-C to stop)")
    opener = None
    if no_browser:
        click.echo(f"Open that address in your browser; {SECRET_NOTE}")
    else:
        import webbrowser

        opener = write_opener(proxy.login_url)
        click.echo(f"Opening it in your browser; {SECRET_NOTE}")
        threading.Timer(0.5, webbrowser.open, args=(opener.as_uri(),)).start()
    # Ctrl-C (SIGINT) stops it even when started from a script's background job, which starts
    # with SIGINT ignored (and Python then installs no KeyboardInterrupt for it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        click.echo("Stopped.")
    finally:
        if opener is not None:
            shutil.rmtree(opener.parent, ignore_errors=True)


def write_opener(login_url: str) -> Path:
    """A page only this user can read that sends the browser to `login_url`: opening the URL
    itself would put the secret on the browser's command line, which `ps` shows to every user
    of the machine (Jupyter opens such a file for the same reason)."""
    folder = Path(tempfile.mkdtemp(prefix="mlflow-gcp-ui-"))  # mode 0700
    page = folder / "open.html"
    fd = os.open(page, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(
            '<!doctype html><meta charset=utf-8><meta name="referrer" content="no-referrer">'
            f'<meta http-equiv="refresh" content="0;url={login_url}">'
            f'<title>mlflow-gcp ui</title><a href="{login_url}">Open the MLflow UI</a>\n'
        )
    return page


commands = [env_cmd, ui_cmd]
