"""`python -m mlflow_gcp.server [serve|migrate|check]`: the container's entrypoint.

serve (default)  validate the environment, then exec into the supervisor (mlflow_gcp.server.launch),
                 which starts the server's workers and, at the same time, `prepare` in a child:
                 the workers import MLflow (~2 s) while the database is awaited and the schema
                 created under a lock (DB_MIGRATE=auto; an existing older schema is refused),
                 created or upgraded (upgrade) or checked (never); they serve
                 only once that succeeded, and its failure is the server's exit code.
migrate          the one-shot migration the Cloud Run Job runs (creates or upgrades the schema;
                 an upgrade is one-way: back up first); ARTIFACT_ROOT is not needed.
check            exit 0 when the schema is current, 4 when it needs `migrate`.
relocate-artifacts [--apply]
                 old gs://ARTIFACT_ROOT/... artifact locations -> mlflow-artifacts:/... (served by
                 the server); counts only unless --apply (server/relocate.py).

Every failure is one line on stderr (JSON unless LOG_FORMAT=text) and a non-zero exit code:
2 bad environment, 3 database unreachable, 4 schema out of date, 1 anything else of ours.
"""

from __future__ import annotations

import os
import signal
import sys

from mlflow_gcp.errors import MlflowGcpError, ServerEnvError
from mlflow_gcp.server import logs
from mlflow_gcp.server.env import settings_from_env

USAGE = "usage: python -m mlflow_gcp.server [serve|migrate|check|relocate-artifacts [--apply]]"
RELOCATE = "relocate-artifacts"
PREPARE = "prepare"  # serve's database wait and schema step, run by the supervisor (internal)


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
    relocating = command == RELOCATE and args[1:] in ([], ["--apply"])
    if not relocating and (command not in ("serve", "migrate", "check", PREPARE) or len(args) > 1):
        print(USAGE, file=sys.stderr)
        return 2
    # Stopped while waiting or migrating: unwind (closing the connection releases the advisory
    # lock and rolls back an unfinished migration) and say so in one line.
    signal.signal(signal.SIGTERM, _stop)
    serving = command in ("serve", PREPARE)
    try:
        settings = settings_from_env(os.environ, serving=serving)
        log = logs.setup(settings.log_format)
        if command == "serve":
            log.info(
                "database %s, artifacts %s (%s)",
                settings.safe_db_uri,
                settings.artifact_root or "-",
                settings.artifact_mode,
            )
            sys.stdout.flush()
            sys.stderr.flush()
            # The supervisor runs `prepare` itself, beside the workers. Same PID, so the signals
            # Cloud Run sends reach it; it never imports MLflow, so it stays a few MB.
            os.execv(sys.executable, [sys.executable, "-m", "mlflow_gcp.server.launch"])
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before MLflow is imported
        if relocating:
            return _relocate(settings, log, apply=args[1:] == ["--apply"])
        from mlflow_gcp.server import migrate

        # `migrate` is the explicit request (the job `up` runs after a backup): it may upgrade.
        mode = {PREPARE: None, "migrate": "upgrade", "check": "never"}[command]
        log.info("%s", migrate.prepare(settings, log, mode=mode))
    except MlflowGcpError as err:
        print(logs.fatal_line(str(err), log_format), file=sys.stderr, flush=True)
        return err.exit_code
    except (KeyboardInterrupt, _Stopped):
        shown = "serve" if serving else command
        print(logs.fatal_line(f"stopped before the server started ({shown})", log_format), file=sys.stderr)
        return 0 if serving else 1
    return 0


def _relocate(settings, log, *, apply: bool) -> int:
    from mlflow_gcp.server import migrate, relocate

    if not settings.artifact_root.startswith("gs://"):
        raise ServerEnvError("ARTIFACT_ROOT: relocate-artifacts needs the gs:// artifact root the server serves")
    engine = migrate.make_engine(settings.db_uri)
    try:
        counts = relocate.relocate(engine, settings.artifact_root, apply=apply)
    finally:
        engine.dispose()
    log.info("%s", relocate.summary(counts, settings.artifact_root, applied=apply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
