"""`python -m mlflow_gcp.server [serve|migrate|check]`: the container's entrypoint.

serve (default)  validate the environment, wait for the database, create/upgrade the schema under
                 a lock (DB_MIGRATE=auto) or check it (never), then exec into the supervisor that
                 runs `mlflow server` (mlflow_gcp.server.launch).
migrate          the one-shot migration the Cloud Run Job runs; ARTIFACT_ROOT is not needed.
check            exit 0 when the schema is current, 4 when it needs `migrate`.

Every failure is one line on stderr (JSON unless LOG_FORMAT=text) and a non-zero exit code:
2 bad environment, 3 database unreachable, 4 schema out of date, 1 anything else of ours.
"""

from __future__ import annotations

import os
import signal
import sys

from mlflow_gcp.errors import MlflowGcpError
from mlflow_gcp.server import logs
from mlflow_gcp.server.env import settings_from_env

USAGE = "usage: python -m mlflow_gcp.server [serve|migrate|check]"


class _Stopped(BaseException):
    pass


def _stop(_signum, _frame):
    raise _Stopped()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "serve"
    # Known before validation, so even a bad LOG_FORMAT is reported in some format.
    log_format = "text" if os.environ.get("LOG_FORMAT", "").strip().lower() == "text" else "json"
    if command in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if command not in ("serve", "migrate", "check") or len(args) > 1:
        print(USAGE, file=sys.stderr)
        return 2
    # Stopped while waiting or migrating: unwind (closing the connection releases the advisory
    # lock and rolls back an unfinished migration) and say so in one line.
    signal.signal(signal.SIGTERM, _stop)
    try:
        settings = settings_from_env(os.environ, serving=command == "serve")
        log = logs.setup(settings.log_format)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before MLflow is imported
        from mlflow_gcp.server import migrate

        mode = {"serve": None, "migrate": "auto", "check": "never"}[command]
        log.info(
            "database %s, artifacts %s (%s)",
            settings.safe_db_uri,
            settings.artifact_root or "-",
            settings.artifact_mode,
        )
        log.info("%s", migrate.prepare(settings, log, mode=mode))
    except MlflowGcpError as err:
        print(logs.fatal_line(str(err), log_format), file=sys.stderr, flush=True)
        return err.exit_code
    except (KeyboardInterrupt, _Stopped):
        print(logs.fatal_line(f"stopped before the server started ({command})", log_format), file=sys.stderr)
        return 0 if command == "serve" else 1
    if command != "serve":
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    # A fresh interpreter that never imported MLflow supervises the server: the heavy modules
    # the migration loaded do not stay resident for the container's life. Same PID, so the
    # signals Cloud Run sends still reach the supervisor.
    os.execv(sys.executable, [sys.executable, "-m", "mlflow_gcp.server.launch"])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
