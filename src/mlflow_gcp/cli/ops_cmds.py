"""Running the deployment: status, logs, doctor, backup, pause/resume, schedule, scale, lifecycle,
cost, upgrade, rotate-password. Parses, calls ops/, renders; no API call is made here directly."""

from __future__ import annotations

import click

from mlflow_gcp.cli import options
from mlflow_gcp.errors import MlflowGcpError

_url = click.option("--url", default=None, metavar="URL",
                    help="Check health at this URL instead of the service's own (e.g. a custom domain).")


def _ctx(cfg_source, quiet: bool = False):
    from mlflow_gcp.cli.deploy import _context

    cfg = cfg_source.load()
    if quiet:  # output that must stay clean (tables, --json): waits still show, on stderr
        return _context(cfg, say=lambda line: None, wait_say=lambda line: click.echo(line, err=True))
    return _context(cfg, say=click.echo)


# ------------------------------------------------------------------ status


@click.command("status")
@options.config_options
@options.json_option
@_url
def status_cmd(cfg_source, as_json: bool, url: str | None) -> None:
    """What is deployed and how it is doing: URL, revision, MLflow version, database, health."""
    from mlflow_gcp.ops import status

    data = status.gather(_ctx(cfg_source, quiet=True), url=url)
    if as_json:
        options.emit_json(data)
        return
    for line in status_lines(data):
        click.echo(line)


def status_lines(d: dict) -> list[str]:
    out = [f"Project {d['project']}, region {d['region']}"]
    s = d["service"]
    if not s["deployed"]:
        out.append(f"Service:   {s['name']} is not deployed (mlflow-gcp up)")
    else:
        out += [
            f"Service:   {s['name']} {'ready' if s['ready'] else 'NOT READY: ' + str(s['condition'])}",
            f"URL:       {s['url']}",
            f"Revision:  {s['ready_revision']} (serving: {', '.join(s['serving']) or 'none'})",
            f"Image:     {s['image']}",
            f"MLflow:    {s['mlflow_version'] or 'unknown'}",
            f"Instances: {s['min_instances']}..{s['max_instances']}",
        ]
    db = d["database"]
    if not db["exists"]:
        out.append(f"Database:  {db['instance']} does not exist")
    else:
        state = "PAUSED (mlflow-gcp resume)" if db["paused"] else db["state"]
        out.append(f"Database:  {db['instance']} {state}, {db['tier']}, {db['version']}")
        last = db.get("last_backup")
        out.append(f"Backup:    {'last ' + last['id'] + ' (' + last['type'] + ') at ' + str(last['time']) if last else 'none yet'}")
    b = d["bucket"]
    if not b["exists"]:
        out.append(f"Bucket:    gs://{b['name']} does not exist")
    else:
        out.append(f"Bucket:    gs://{b['name']}")
        out += [f"  rule:    {r}" for r in b.get("lifecycle") or []]
    sched = d.get("schedule")
    if sched and "pause" in sched:
        out.append(f"Schedule:  pause {sched['pause']['when']}, resume {sched.get('resume', {}).get('when', '?')} "
                   f"({sched['pause']['time_zone']})")
        if sched.get("backups_note"):
            out.append(f"  note:    {sched['backups_note']}")
    bud = d["budget"]
    if "at_most" in bud:
        out.append(f"Connections: at most {bud['at_most']} of {bud['max_connections']} "
                   f"({bud['instances']} instances x {bud['per_instance']} + {bud['reserved']} reserved)"
                   + ("" if bud["fits"] else "  OVER BUDGET"))
    if d.get("health"):
        out.append(f"Health:    {d['health']['message']}")
    return out


# ------------------------------------------------------------------ logs


@click.command("logs")
@options.config_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000), help="Entries to show.")
@click.option("--since", default=None, metavar="DURATION", help="Only newer than this, e.g. 30m, 1h, 2d.")
@click.option("--severity", default=None, help="Minimum severity, e.g. WARNING or ERROR.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new entries (Ctrl-C to stop).")
@click.option("--audit", is_flag=True, help="Admin-activity audit entries for the deployment's resources.")
@click.option("--caller", default=None, metavar="EMAIL",
              help="Only the MLflow requests that verified caller made (docs/access.md).")
@options.json_option
def logs_cmd(cfg_source, limit, since, severity, follow, audit, caller, as_json) -> None:
    """Log entries of the service and the migration job (or --audit), one line each."""
    import datetime as dt
    import json
    import time

    from mlflow_gcp.ops import logs

    severity = logs.check_severity(severity)
    since_ts = logs.parse_since(since, dt.datetime.now(dt.timezone.utc))
    ctx = _ctx(cfg_source, quiet=True)

    def emit(entry: dict) -> None:
        click.echo(json.dumps(entry, sort_keys=True) if as_json else logs.line(entry))

    if follow:
        try:
            logs.follow(ctx.clients, ctx.cfg, since=since_ts, severity=severity, audit=audit, limit=limit,
                        emit=emit, sleep=time.sleep, caller=caller)
        except KeyboardInterrupt:
            pass
        return
    entries = logs.read(ctx.clients, logs.filters(ctx.cfg, since=since_ts, severity=severity, audit=audit,
                                                  caller=caller), limit)
    if not entries and not as_json:
        click.echo("No log entries" + (f" in the last {since}" if since else "") + ".", err=True)
    for entry in entries:
        emit(entry)


# ------------------------------------------------------------------ doctor


@click.command("doctor")
@options.config_options
@options.json_option
@_url
def doctor_cmd(cfg_source, as_json: bool, url: str | None) -> None:
    """Check the deployment; each check PASS, WARN or FAIL with the command that fixes it."""
    from mlflow_gcp.ops import doctor

    checks = doctor.run_checks(_ctx(cfg_source, quiet=True), url=url)
    if as_json:
        options.emit_json([c.as_dict() for c in checks])
    else:
        for c in checks:
            click.echo(f"{c.status}  {c.name}: {c.detail}")
            if c.fix and c.status != doctor.PASS:
                for command in c.fix.splitlines():  # one runnable command per line
                    click.echo(f"      fix: {command}")
        fails = sum(c.status == doctor.FAIL for c in checks)
        warns = sum(c.status == doctor.WARN for c in checks)
        click.echo(f"\n{len(checks)} checks: {fails} failed, {warns} warning(s).")
    failed = [c.name for c in checks if c.status == doctor.FAIL]
    if failed:
        # An error (not click's Exit, which main() would turn into 0) so scripts see exit code 1.
        raise MlflowGcpError(f"{len(failed)} check(s) failed: {', '.join(failed)}")


# ------------------------------------------------------------------ backup


@click.group("backup")
def backup_group() -> None:
    """Cloud SQL backups of the MLflow database (artifacts live in the bucket, not here)."""


@backup_group.command("create")
@options.config_options
@click.option("--description", default="on-demand backup by mlflow-gcp", show_default=True)
def backup_create(cfg_source, description: str) -> None:
    """Take a backup now and wait for it."""
    from mlflow_gcp.ops import backup

    row = backup.create(_ctx(cfg_source), description)
    click.echo(f"Backup {row['id']} done ({row['status']}).")


@backup_group.command("list")
@options.config_options
@options.json_option
def backup_list(cfg_source, as_json: bool) -> None:
    """Backups, newest first."""
    from mlflow_gcp.ops import backup

    rows = backup.list_backups(_ctx(cfg_source, quiet=True))
    if not rows and not as_json:
        click.echo("No backups yet.")
        return
    options.table(rows, ["id", "type", "status", "time", "description"], as_json)


@backup_group.command("restore")
@options.config_options
@options.yes_option
@click.argument("backup_id")
def backup_restore(cfg_source, yes: bool, backup_id: str) -> None:
    """Restore BACKUP_ID (after a safety backup of the current state)."""
    from mlflow_gcp.ops import backup

    ctx = _ctx(cfg_source)
    backup.check_restorable(ctx, backup_id)
    click.echo(f"Restoring backup {backup_id} replaces every experiment, run and registered model in "
               f"{ctx.cfg.database.instance} with the backup's. A safety backup is taken first.")
    options.confirm(f"Restore backup {backup_id}?", yes)
    result = backup.restore(ctx, backup_id)
    click.echo(f"Restored backup {result.restored}. The state before it is safety backup {result.safety_backup} "
               f"(mlflow-gcp backup restore {result.safety_backup} undoes this).")


# ------------------------------------------------------------------ pause / resume


@click.command("pause")
@options.config_options
@options.yes_option
def pause_cmd(cfg_source, yes: bool) -> None:
    """Stop Cloud SQL (the biggest cost); MLflow answers errors until `resume`."""
    from mlflow_gcp.ops import pause

    from mlflow_gcp.ops import schedule

    ctx = _ctx(cfg_source)
    options.confirm(f"Stop {ctx.cfg.database.instance}? The MLflow server will not work until `mlflow-gcp resume`", yes)
    click.echo(pause.pause(ctx).message)
    timetable = schedule.show(ctx, quiet=True) or {}
    if "resume" in timetable:
        click.echo(f"Note: the schedule starts it again {timetable['resume']['when']} ({timetable['resume']['time_zone']}).")


@click.command("resume")
@options.config_options
def resume_cmd(cfg_source) -> None:
    """Start Cloud SQL again after `pause`."""
    from mlflow_gcp.ops import pause

    click.echo(pause.resume(_ctx(cfg_source)).message)


# ------------------------------------------------------------------ schedule


@click.group("schedule")
def schedule_group() -> None:
    """Pause and resume the database on a weekly timetable (Cloud Scheduler)."""


@schedule_group.command("set")
@options.config_options
@click.option("--pause", "pause_at", required=True, metavar="'DAYS HH:MM'", help="When to stop, e.g. 'fri 20:00' or 'mon-fri 20:00'.")
@click.option("--resume", "resume_at", required=True, metavar="'DAYS HH:MM'", help="When to start, e.g. 'mon 07:00'.")
@click.option("--time-zone", default="UTC", show_default=True, help="IANA time zone of those times, e.g. Europe/Paris.")
def schedule_set(cfg_source, pause_at: str, resume_at: str, time_zone: str) -> None:
    """Create or update the timetable."""
    from mlflow_gcp.ops import schedule

    p, r = schedule.parse_when(pause_at, "pause"), schedule.parse_when(resume_at, "resume")
    schedule.check_time_zone(time_zone)
    ctx = _ctx(cfg_source)
    changes = schedule.set_schedule(ctx, p, r, time_zone)
    for c in changes:
        click.echo(f"  {c}")
    hours = schedule.paused_hours_per_week(p, r)
    click.echo(("No changes: " if not changes else "") + f"paused {p} -> {r} ({time_zone}): {hours:.0f} h a week, "
               f"about ${schedule.monthly_saving(ctx.cfg, hours):.2f} a month saved on the instance.")
    note = schedule.backups_note(p, r)
    if note:
        click.echo(f"Warning: {note}.", err=True)


@schedule_group.command("show")
@options.config_options
@options.json_option
def schedule_show(cfg_source, as_json: bool) -> None:
    """The timetable and what it saves."""
    from mlflow_gcp.ops import schedule

    data = schedule.show(_ctx(cfg_source, quiet=True))
    if as_json:
        options.emit_json(data)
    elif not data:
        click.echo("No schedule (mlflow-gcp schedule set --pause 'fri 20:00' --resume 'mon 07:00').")
    else:
        for kind in ("pause", "resume"):
            if kind in data:
                j = data[kind]
                click.echo(f"{kind:<7} {j['when']} ({j['time_zone']}, cron '{j['cron']}', {j['state']})")
        if "paused_hours_per_week" in data:
            click.echo(f"paused {data['paused_hours_per_week']:.0f} h a week: about "
                       f"${data['monthly_saving_usd']:.2f} a month saved")
        if data.get("region"):
            click.echo(f"jobs in {data['region']}")
        if data.get("backups_note"):
            click.echo(f"Warning: {data['backups_note']}.")


@schedule_group.command("clear")
@options.config_options
def schedule_clear(cfg_source) -> None:
    """Delete the timetable (the database stays as it is now)."""
    from mlflow_gcp.ops import schedule

    done = schedule.clear(_ctx(cfg_source))
    click.echo("\n".join(done) if done else "No schedule to clear.")


# ------------------------------------------------------------------ scale


@click.command("scale")
@options.config_options
@click.option("--max-instances", type=click.IntRange(1, 100), required=True)
@click.option("--min-instances", type=click.IntRange(0, 100), default=None)
def scale_cmd(cfg_source, max_instances: int, min_instances: int | None) -> None:
    """Change the instance limits, within the database's connection budget."""
    from mlflow_gcp.ops import scale

    scale.check_args(max_instances, min_instances)
    ctx = _ctx(cfg_source)
    result = scale.scale(ctx, max_instances, min_instances, config_file=cfg_source.file)
    verb = "Scaled" if result.changed else "Already at"
    click.echo(f"{verb} {result.min_instances}..{result.max_instances} instances, "
               f"{result.per_instance} database connections each.")
    if result.saved_to:
        click.echo(f"Saved to {result.saved_to}.")


# ------------------------------------------------------------------ lifecycle


@click.group("lifecycle")
def lifecycle_group() -> None:
    """The artifact bucket's age rule (never deletes what registered models use)."""


@lifecycle_group.command("show")
@options.config_options
@options.json_option
def lifecycle_show(cfg_source, as_json: bool) -> None:
    """The bucket's rules, in words."""
    from mlflow_gcp.ops import lifecycle

    data = lifecycle.show(_ctx(cfg_source, quiet=True))
    if as_json:
        options.emit_json(data)
        return
    click.echo(f"gs://{data['bucket']}:")
    for line in data["explained"] or ["no rules"]:
        click.echo(f"  {line}")


@lifecycle_group.command("set")
@options.config_options
@options.yes_option
@click.option("--days", type=click.IntRange(1, 36500), required=True)
@click.option("--action", type=click.Choice(["archive", "delete"]), required=True)
@click.option("--prefix", default=None, help="Only objects under this prefix (required for delete).")
@click.option("--storage-class", type=click.Choice(["NEARLINE", "COLDLINE", "ARCHIVE"]), default=None)
@_url
def lifecycle_set(cfg_source, yes, days, action, prefix, storage_class, url) -> None:
    """Explain the new rule, check registered models, then apply it."""
    from mlflow_gcp.ops import lifecycle

    ctx = _ctx(cfg_source, quiet=True)
    new_cfg = lifecycle.new_config(ctx.cfg, days, action, prefix, storage_class)
    for line in lifecycle.explain(new_cfg):
        click.echo(line)
    if action == "delete":
        service_url = url
        if not service_url:
            from mlflow_gcp.gcp import run

            svc = run.get_service(ctx.clients, ctx.cfg)
            service_url = svc.uri if svc else None
        checked = lifecycle.check_models(new_cfg, service_url)
        if checked.conflicts:
            for c in checked.conflicts:
                click.echo(f"  in use: {c}", err=True)
            raise lifecycle.UnsafeRule(checked.message + "; the rule was not set",
                                       hint="choose a prefix no registered model uses, or --action archive")
        if checked.checked:
            click.echo(f"Checked: {checked.message}.")
        else:
            click.echo(f"Warning: {checked.message}; make sure no registered model uses that prefix.", err=True)
    options.confirm("Apply this rule?", yes)
    result = lifecycle.apply(ctx, new_cfg, config_file=cfg_source.file)
    click.echo("Rule applied." if result["changed"] else "No changes: the bucket already has this rule.")
    if result["saved"]:
        click.echo(f"Saved to {cfg_source.file}.")


# ------------------------------------------------------------------ cost


@click.command("cost")
@options.config_options
@options.json_option
def cost_cmd(cfg_source, as_json: bool) -> None:
    """Monthly estimate per component, and what pausing or a schedule saves."""
    from mlflow_gcp.cli.deploy import _render_cost
    from mlflow_gcp.ops import cost, schedule

    cfg = cfg_source.load()
    estimate = cost.estimate(cfg)
    current = None
    try:
        from mlflow_gcp.gcp import errors as gerrors
        from mlflow_gcp.gcp.clients import Clients
        from mlflow_gcp.plan.steps import Context

        # One quick try: an estimate must not wait minutes on a network or credentials problem.
        quick = Context(cfg, Clients.from_env(cfg.project, retry=gerrors.NO_RETRY))
        current = schedule.show(quick, quiet=True)
    except MlflowGcpError:
        current = None  # no credentials or no deployment: estimate from the config alone
    if current and "error" in current:
        current = None
    saved = schedule.savings(cfg, current)
    if as_json:
        options.emit_json({**estimate.as_dict(), "pausing": saved})
        return
    _render_cost(estimate)
    click.echo(f"\nPausing (mlflow-gcp pause) saves ${saved['instance_hourly_usd']:.4f} per paused hour "
               f"(instance ${saved['instance_monthly_usd']:.2f}/month); {saved['note']}.")
    for ex in saved["examples"]:
        click.echo(f"  {ex['timetable']:<52} {ex['paused_hours_per_week']:>4.0f} h/week  "
                   f"saves about ${ex['monthly_saving_usd']:.2f}/month")
    if "schedule" in saved:
        s = saved["schedule"]
        click.echo(f"  your schedule (pause {s['pause']['when']}, resume {s['resume']['when']})"
                   f" {s['paused_hours_per_week']:.0f} h/week  saves about ${s['monthly_saving_usd']:.2f}/month")


# ------------------------------------------------------------------ upgrade / rotate-password


@click.command("upgrade")
@options.config_options
@options.yes_option
@click.option("--mlflow-version", required=True, metavar="X.Y.Z")
@_url
def upgrade_cmd(cfg_source, yes: bool, mlflow_version: str, url: str | None) -> None:
    """Backup, build, migrate, roll out, smoke-test; traffic goes back if the new one is unhealthy."""
    from mlflow_gcp.ops import upgrade

    ctx = _ctx(cfg_source)
    upgrade.target_config(ctx.cfg, mlflow_version)  # refuse a bad version before asking
    options.confirm(f"Upgrade MLflow to {mlflow_version} (the schema migration cannot be undone; a backup is taken)?", yes)
    from mlflow_gcp.ops import history

    try:
        result = upgrade.upgrade(ctx, mlflow_version, url=url, config_file=cfg_source.file)
    except upgrade.UpgradeFailed as err:
        history.append(cfg_source.file, {"command": "upgrade", "project": ctx.cfg.project,
                                         "mlflow_version": mlflow_version, "outcome": "rolled back", "reason": err.message})
        raise
    if not result.unchanged:
        history.append(cfg_source.file, {"command": "upgrade", "project": ctx.cfg.project,
                                         "mlflow_version": mlflow_version, "outcome": result.outcome,
                                         "health": result.health, "revision": result.revision,
                                         "previous_revision": result.previous_revision, "backup": result.backup_id})
    if result.unchanged:
        click.echo(f"Already on MLflow {mlflow_version}.")
        if result.other_source:
            click.echo("The server runs an image of another mlflow-gcp release: `mlflow-gcp up` builds and rolls out this one.")
        return
    click.echo(f"Upgraded to MLflow {mlflow_version}: revision {result.revision} serves all traffic "
               f"(previous {result.previous_revision}, backup {result.backup_id})"
               + ("." if result.verified else "; its health was NOT verified."))
    click.echo(result.health)
    if not result.verified:
        # No exit code means "done but unverified" (1 is failure, 4 a declined prompt): exit 0, said on stderr.
        click.echo(f"Warning: the health of revision {result.revision} was NOT verified ({result.health}); "
                   f"{upgrade.VERIFY_HINT}.", err=True)
    if result.saved_to:
        click.echo(f"Saved service.mlflow_version = {mlflow_version} to {result.saved_to}.")


@click.command("rotate-password")
@options.config_options
@options.yes_option
def rotate_cmd(cfg_source, yes: bool) -> None:
    """New database password: secret version, database user, new revision, old version disabled."""
    from mlflow_gcp.ops import rotate

    ctx = _ctx(cfg_source)
    options.confirm("Rotate the database password (open connections are replaced during the rollout)?", yes)
    result = rotate.rotate(ctx)
    click.echo(f"Password rotated: secret version {result.version}, revision {result.revision}"
               + (f", disabled version(s) {', '.join(result.disabled)}." if result.disabled else "."))


commands = [status_cmd, logs_cmd, doctor_cmd, backup_group, pause_cmd, resume_cmd, schedule_group, scale_cmd,
            lifecycle_group, cost_cmd, upgrade_cmd, rotate_cmd]
