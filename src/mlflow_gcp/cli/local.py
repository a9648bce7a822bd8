"""`mlflow-gcp local`: the production server entrypoint on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from mlflow_gcp.server import local as local_mod
from mlflow_gcp.redaction import redact

BACKEND_ENV = "MLFLOW_GCP_BACKEND_STORE_URI"


@click.command("local")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(local_mod.DEFAULT_DATA_DIR),
    show_default=True,
    help="Where the SQLite file, the artifacts and the emulator's files live.",
)
@click.option("--host", default=local_mod.DEFAULT_HOST, show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=local_mod.DEFAULT_PORT, show_default=True)
@click.option(
    "--backend-store-uri",
    envvar=BACKEND_ENV,
    default=None,
    metavar="URI",
    help="Database instead of the embedded SQLite file, e.g. postgresql://user@127.0.0.1:5432/mlflow. "
    f"A password goes in ${BACKEND_ENV} or ~/.pgpass, never on the command line (`ps` shows it).",
)
@click.option(
    "--artifacts-destination",
    default=None,
    metavar="URI",
    help="Artifact store instead of DATA_DIR/artifacts, e.g. gs://bucket "
    "(honours STORAGE_EMULATOR_HOST).",
)
@click.option(
    "--gcs-emulator",
    is_flag=True,
    help="Start a GCS emulator (files in DATA_DIR/gcs), create the bucket, and store artifacts "
    f"there (default gs://{local_mod.EMULATOR_BUCKET}).",
)
@click.option("--workers", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option("--permissions", is_flag=True,
              help="MLflow permissions as deployed with access.permissions; callers name themselves "
              "with the X-Mlflow-Gcp-Dev-User header (MLFLOW_GCP_DEV_USER=EMAIL for the plugin).")
@click.option("--admin", "admins", multiple=True, metavar="EMAIL",
              help=f"An MLflow admin with --permissions (repeatable; default "
              f"{local_mod.DEFAULT_LOCAL_ADMIN}); the first is the browser's user.")
@click.option(
    "--upgrade-db",
    is_flag=True,
    help="Upgrade a database made by an older MLflow to this MLflow's schema. One-way: back the "
    "database up first (without this flag such a database is refused, with both versions named).",
)
@click.option(
    "--allowed-hosts",
    envvar="ALLOWED_HOSTS",
    default="",
    metavar="HOSTS",
    help="Comma-separated Host names (or patterns such as *.example.com) to accept besides "
    "127.0.0.1, localhost and [::1]: needed to reach the server by another name, e.g. with --host 0.0.0.0.",
)
@click.option(
    "--gateway",
    is_flag=True,
    help="Turn on MLflow's AI gateway (/gateway/...; off by default). Its stored provider keys are "
    f"encrypted with a passphrase kept in DATA_DIR/{local_mod.GATEWAY_PASSPHRASE_FILE} "
    "(or $MLFLOW_CRYPTO_KEK_PASSPHRASE).",
)
def local(data_dir, host, port, backend_store_uri, artifacts_destination, gcs_emulator, workers,
          permissions, admins, upgrade_db, allowed_hosts, gateway):
    """Run the MLflow server locally, exactly as the container runs it.

    Embedded SQLite and a local artifacts folder by default; PostgreSQL and a GCS emulator for
    production parity. Ctrl-C stops everything it started.
    """
    source = click.get_current_context().get_parameter_source("backend_store_uri")
    if backend_store_uri and source == click.core.ParameterSource.COMMANDLINE and redact(backend_store_uri) != backend_store_uri:
        # Every user of this machine can read a process's argv; the server gets the URI by
        # environment (the entrypoint's DB_URI), and so should this command.
        raise click.BadParameter(
            f"it holds a password, which `ps` shows to every user of this machine: set {BACKEND_ENV} "
            "in the environment instead, or keep the password in ~/.pgpass (PGPASSFILE)",
            param_hint="--backend-store-uri",
        )
    if artifacts_destination and gcs_emulator and not artifacts_destination.startswith("gs://"):
        raise click.BadParameter("--gcs-emulator needs a gs:// destination", param_hint="--artifacts-destination")
    opts = local_mod.LocalOptions(
        data_dir=data_dir,
        host=host,
        port=port,
        backend_store_uri=backend_store_uri,
        artifacts_destination=artifacts_destination,
        gcs_emulator=gcs_emulator,
        workers=workers,
        permissions=permissions,
        admins=tuple(a.strip().lower() for a in admins),
        upgrade_db=upgrade_db,
        allowed_hosts=tuple(h.strip() for h in allowed_hosts.split(",") if h.strip()),
        gateway=gateway,
    )
    if admins and not permissions:
        raise click.UsageError("--admin goes with --permissions")
    stack = local_mod.LocalStack(opts)
    try:
        click.echo(f"Starting the MLflow server ({_schema_banner(upgrade_db)})...", err=True)
        url = stack.start()
        click.echo(f"MLflow is running at {url}")
        if stack.env.get("STORAGE_EMULATOR_HOST") and gcs_emulator:
            click.echo(f"GCS emulator: {stack.env['STORAGE_EMULATOR_HOST']}")
        if host not in ("127.0.0.1", "localhost", "::1") and not opts.allowed_hosts:
            click.echo("Only requests addressed to 127.0.0.1, localhost or [::1] are answered; "
                       "pass --allowed-hosts NAME to reach it as NAME.", err=True)
        click.echo("Point a client at it with:")
        click.echo(f"  export MLFLOW_TRACKING_URI={url}")
        click.echo("Press Ctrl-C to stop.", err=True)
        code = stack.wait()
    finally:
        stack.stop()
    click.echo("Stopped.", err=True)
    click.get_current_context().exit(code)


def _schema_banner(upgrade_db: bool) -> str:
    # An existing database is never "created": say what happens to one made by another MLflow.
    if upgrade_db:
        return ("an empty database gets the schema; an older MLflow's schema is UPGRADED, "
                "one-way: have a backup")
    return ("an empty database gets the schema; one made by an older MLflow is left as it is "
            "and refused, see --upgrade-db")


commands = [local]
