"""`schedule`: pause and resume the database on a weekly timetable with Cloud Scheduler.

Two Cloud Scheduler jobs call the Cloud SQL Admin API directly (instances.patch with
settings.activationPolicy NEVER / ALWAYS), authenticated with an OAuth token of a dedicated
service account that holds roles/cloudsql.editor: no function or server of ours runs.
The jobs themselves are the record of the timetable (nothing is written to the config file).

Cloud Scheduler runs in some regions only (europe-west9 is not one): the jobs live in the
deployment's region when Cloud Scheduler has it, else in a nearby one that does (`job_region`).
Their target is the global Cloud SQL Admin API, so where they run changes nothing else.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

from mlflow_gcp.errors import ApiDisabled, ConfigError, GcpError
from mlflow_gcp.gcp import iam, iampolicy, resourcemanager, scheduler, serviceusage
from mlflow_gcp.ops import cost, pause

SCHEDULER_SERVICE = "cloudscheduler.googleapis.com"
SCHEDULER_ACCOUNT = "mlflow-gcp-scheduler"
SCHEDULER_ROLE = "roles/cloudsql.editor"  # holds cloudsql.instances.update, not create/delete
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
SQLADMIN_URL = "https://sqladmin.googleapis.com/v1"
MINUTES_PER_WEEK = 7 * 24 * 60
WEEKS_PER_MONTH = cost.HOURS_PER_MONTH / (7 * 24)
DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
_WHEN_RE = re.compile(r"^\s*(?:(?P<days>[A-Za-z,\-*]+)\s+)?(?P<h>\d{1,2}):(?P<m>\d{2})\s*$")
EXAMPLE = 'e.g. --pause "fri 20:00" --resume "mon 07:00", or --pause "mon-fri 20:00"'
# Where the jobs go when Cloud Scheduler lacks the deployment's region and its continent too.
FALLBACK_REGION = "us-central1"
# Cloud SQL stops taking automated backups once an instance has been stopped this long.
BACKUPS_HALT_HOURS = 36
# A resume that meets a running backup (or any other operation) gets 409 and would leave the
# database stopped until the next timetable slot: retry it. 5 is Cloud Scheduler's maximum;
# 1, 2, 4, 8, then 15 min apart covers half an hour, longer than a backup of a small instance.
RETRY_CONFIG = {"retryCount": 5, "minBackoffDuration": "60s", "maxBackoffDuration": "900s", "maxDoublings": 3}


@dataclass(frozen=True)
class When:
    days: tuple[int, ...]  # 0 = Monday .. 6 = Sunday
    hour: int
    minute: int

    @property
    def cron(self) -> str:
        if len(self.days) == 7:
            dow = "*"
        else:
            # cron counts 0 = Sunday .. 6 = Saturday
            dow = ",".join(str((d + 1) % 7) for d in self.days)
        return f"{self.minute} {self.hour} * * {dow}"

    def minutes(self) -> list[int]:
        return [d * 1440 + self.hour * 60 + self.minute for d in self.days]

    def __str__(self) -> str:
        days = "daily" if len(self.days) == 7 else ",".join(DAYS[d].lower() for d in self.days)
        return f"{days} {self.hour:02d}:{self.minute:02d}"


def parse_when(text: str, field: str) -> When:
    """'fri 20:00', 'mon-fri 19:30', 'sat,sun 08:00', 'daily 22:00' or '22:00' (daily)."""
    m = _WHEN_RE.match(text or "")
    if not m:
        raise ConfigError([(field, f"{text!r} is not DAYS HH:MM ({EXAMPLE})")])
    hour, minute = int(m["h"]), int(m["m"])
    if hour > 23 or minute > 59:
        raise ConfigError([(field, f"{text!r}: no such time of day")])
    spec = (m["days"] or "daily").upper()
    if spec in ("DAILY", "*"):
        return When(tuple(range(7)), hour, minute)
    days: list[int] = []
    for part in spec.split(","):
        ends = part.split("-")
        try:
            idx = [DAYS.index(e[:3]) for e in ends if e]
        except ValueError:
            raise ConfigError([(field, f"{part!r} is not a day; use mon..sun, a range mon-fri, or daily")]) from None
        if len(idx) == 1:
            days.append(idx[0])
        elif len(idx) == 2:
            a, b = idx
            days += list(range(a, b + 1)) if a <= b else list(range(a, 7)) + list(range(0, b + 1))
        else:
            raise ConfigError([(field, f"{part!r} is not a day range")])
    return When(tuple(sorted(set(days))), hour, minute)


def paused_hours_per_week(pause_at: When, resume_at: When) -> float:
    """Hours per week the database is stopped under this timetable."""
    events = sorted([(t, False) for t in pause_at.minutes()] + [(t, True) for t in resume_at.minutes()])
    if not events:
        return 0.0
    # The state at the start of the week is the one the last event of the week left.
    running = events[-1][1]
    paused, last = 0, 0
    for t, starts in events:
        if not running:
            paused += t - last
        running, last = starts, t
    if not running:
        paused += MINUTES_PER_WEEK - last
    return paused / 60


def longest_pause(pause_at: When, resume_at: When) -> tuple[float, int | None]:
    """The longest stretch (hours) the timetable keeps the database stopped, and the minute of
    the week it starts at (None when the timetable never resumes)."""
    events = sorted([(t, False) for t in pause_at.minutes()] + [(t, True) for t in resume_at.minutes()])
    if not any(starts for _, starts in events):
        return float(7 * 24), None
    # Walk two weeks so a stretch over the week's end counts whole.
    events = events + [(t + MINUTES_PER_WEEK, s) for t, s in events]
    best, start, paused_since = 0, None, None
    for t, starts in events:
        if starts and paused_since is not None:
            if t - paused_since > best:
                best, start = t - paused_since, paused_since % MINUTES_PER_WEEK
            paused_since = None
        elif not starts and paused_since is None:
            paused_since = t
    return best / 60, start


def backups_note(pause_at: When, resume_at: When) -> str | None:
    """What to tell the user when the timetable stops the database long enough to halt backups."""
    hours, start = longest_pause(pause_at, resume_at)
    if hours <= BACKUPS_HALT_HOURS:
        return None
    when = "" if start is None else f" (from {DAYS[start // 1440].lower()} {start % 1440 // 60:02d}:{start % 60:02d})"
    return (f"the database stays stopped up to {hours:.0f} h in a row{when}; Cloud SQL takes no automated "
            f"backup of an instance stopped for more than {BACKUPS_HALT_HOURS} h (one is taken when it stops), "
            "so those days have no nightly backup: take one before a long pause (mlflow-gcp backup create) "
            "or resume within 36 h")


def monthly_saving(cfg, hours_per_week: float) -> float:
    """USD a month saved on the instance (storage is billed either way)."""
    hourly = _instance_hourly(cfg)
    return round(hours_per_week * WEEKS_PER_MONTH * hourly, 2)


def _instance_hourly(cfg) -> float:
    for line in cost.estimate(cfg).lines:
        if line.component == "Cloud SQL instance":
            return line.monthly_usd / cost.HOURS_PER_MONTH
    return 0.0


def job_ids(cfg) -> dict[str, str]:
    return {"pause": f"{cfg.service.name}-db-pause", "resume": f"{cfg.service.name}-db-resume"}


def account_email(cfg) -> str:
    return f"{SCHEDULER_ACCOUNT}@{cfg.project}.iam.gserviceaccount.com"


def pick_region(region: str, supported: list[str]) -> str:
    """`region` when Cloud Scheduler hosts it, else the first supported region of its family
    (europe-west9 -> europe-west1), of its continent, then FALLBACK_REGION."""
    if region in supported or not supported:
        return region

    def natural(name: str) -> tuple:
        head = name.rstrip("0123456789")
        return head, int(name[len(head):] or 0)

    ordered = sorted(supported, key=natural)
    family, continent = natural(region)[0], region.split("-")[0] + "-"
    for near in ([r for r in ordered if natural(r)[0] == family], [r for r in ordered if r.startswith(continent)]):
        if near:
            return near[0]
    return FALLBACK_REGION if FALLBACK_REGION in supported else ordered[0]


def job_region(ctx) -> str:
    """Where the deployment's jobs live (read once per command from locations.list)."""
    if "scheduler_region" not in ctx.facts:
        ctx.facts["scheduler_region"] = pick_region(ctx.cfg.region, scheduler.list_locations(ctx.clients))
    return ctx.facts["scheduler_region"]


def job_body(ctx, kind: str, when: When, time_zone: str) -> dict:
    cfg = ctx.cfg
    policy = pause.NEVER if kind == "pause" else pause.ALWAYS
    payload = base64.b64encode(json.dumps(pause.body(policy)).encode()).decode()
    return {
        "name": scheduler.job_name(ctx.clients, job_region(ctx), job_ids(cfg)[kind]),
        "description": f"mlflow-gcp: {kind} Cloud SQL instance {cfg.database.instance} ({when})",
        "schedule": when.cron,
        "timeZone": time_zone,
        "httpTarget": {
            "uri": f"{SQLADMIN_URL}/projects/{cfg.project}/instances/{cfg.database.instance}",
            "httpMethod": "PATCH",
            "headers": {"Content-Type": "application/json"},
            "body": payload,
            "oauthToken": {"serviceAccountEmail": account_email(cfg), "scope": SCOPE},
        },
        "retryConfig": dict(RETRY_CONFIG),
    }


_COMPARED = ("schedule", "timeZone", "httpTarget", "description", "retryConfig")


def _same(want: dict, have: dict) -> bool:
    for key in _COMPARED:
        if key in ("httpTarget", "retryConfig"):  # Google fills the fields we leave out
            h = have.get(key) or {}
            if any(h.get(k) != v for k, v in want[key].items()):
                return False
        elif want[key] != have.get(key):
            return False
    return True


def check_time_zone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError([("time-zone", f"{name!r} is not a time zone; use an IANA name such as Europe/Paris")]) from None
    return name


def set_schedule(ctx, pause_at: When, resume_at: When, time_zone: str) -> list[str]:
    """Create or update both jobs (and what they need); the list of changes made."""
    cfg, clients = ctx.cfg, ctx.clients
    check_time_zone(time_zone)
    changes: list[str] = []
    if serviceusage.disabled(clients, [SCHEDULER_SERVICE]):
        ctx.say(f"enabling {SCHEDULER_SERVICE}")
        serviceusage.enable(clients, [SCHEDULER_SERVICE], progress=ctx.progress)
        changes.append(f"enabled {SCHEDULER_SERVICE}")
    region = job_region(ctx)
    email = account_email(cfg)
    if iam.get_service_account(clients, email) is None:
        iam.create_service_account(clients, SCHEDULER_ACCOUNT, "mlflow-gcp scheduler",
                                   "Stops and starts Cloud SQL on the mlflow-gcp schedule")
        changes.append(f"created service account {email}")
    added = iampolicy.ensure(
        lambda: resourcemanager.get_iam_policy(clients),
        lambda p: resourcemanager.set_iam_policy(clients, p),
        [(SCHEDULER_ROLE, f"serviceAccount:{email}")],
    )
    if added:
        changes.append(f"granted {SCHEDULER_ROLE} to {email}")
    wants = {kind: job_body(ctx, kind, when, time_zone) for kind, when in (("pause", pause_at), ("resume", resume_at))}
    haves = {kind: scheduler.get_job(clients, region, job_ids(cfg)[kind]) for kind in wants}
    if region != cfg.region and any(not h or not _same(wants[k], h) for k, h in haves.items()):
        ctx.say(f"Cloud Scheduler does not run in {cfg.region}: the jobs go to {region} "
                "(they call the global Cloud SQL Admin API, so nothing else changes)")
    for kind, when in (("pause", pause_at), ("resume", resume_at)):
        want, have = wants[kind], haves[kind]
        if have is None:
            scheduler.create_job(clients, region, want)
            changes.append(f"created job {job_ids(cfg)[kind]} ({when} {time_zone})")
        elif not _same(want, have):
            scheduler.update_job(clients, want, ",".join(_COMPARED))
            changes.append(f"updated job {job_ids(cfg)[kind]} ({when} {time_zone})")
    return changes


def _parse_cron(cron: str) -> When | None:
    parts = (cron or "").split()
    if len(parts) != 5 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    if parts[4] == "*":
        days = tuple(range(7))
    else:
        try:
            days = tuple(sorted({(int(d) - 1) % 7 for d in parts[4].split(",")}))
        except ValueError:
            return None
    return When(days, int(parts[1]), int(parts[0]))


def show(ctx, quiet: bool = False) -> dict | None:
    """The timetable as the jobs say, with the hours paused and the saving; None when unset."""
    cfg = ctx.cfg
    try:
        region = job_region(ctx)
        jobs = {k: scheduler.get_job(ctx.clients, region, j) for k, j in job_ids(cfg).items()}
    except GcpError as err:
        if quiet:
            return {"error": err.message}
        raise
    if not any(jobs.values()):
        return None
    out: dict = {"region": region}
    for kind, job in jobs.items():
        if job:
            out[kind] = {"when": str(_parse_cron(job.get("schedule")) or job.get("schedule")),
                         "cron": job.get("schedule"), "time_zone": job.get("timeZone"), "state": job.get("state")}
    if jobs["pause"] and jobs["resume"]:
        p, r = _parse_cron(jobs["pause"]["schedule"]), _parse_cron(jobs["resume"]["schedule"])
        if p and r:
            hours = paused_hours_per_week(p, r)
            out["paused_hours_per_week"] = round(hours, 1)
            out["monthly_saving_usd"] = monthly_saving(cfg, hours)
            note = backups_note(p, r)
            if note:
                out["backups_note"] = note
    return out


def clear(ctx) -> list[str]:
    """Delete both jobs (the service account stays: it may serve another deployment)."""
    out = []
    region = job_region(ctx)
    for job_id in job_ids(ctx.cfg).values():
        if scheduler.delete_job(ctx.clients, region, job_id):
            out.append(f"deleted job {job_id}")
    return out


def remove_all(ctx) -> tuple[list[str], list[str]]:
    """For `destroy`: the jobs, and the scheduler account with its project binding unless
    another deployment's job still uses it. (deleted, kept) descriptions."""
    clients, email = ctx.clients, account_email(ctx.cfg)
    deleted, kept = [], []
    try:
        region = job_region(ctx)
        for job_id in job_ids(ctx.cfg).values():
            if scheduler.get_job(clients, region, job_id) is not None and scheduler.delete_job(clients, region, job_id):
                deleted.append(f"Cloud Scheduler job {job_id} ({region})")
    except ApiDisabled:
        pass  # never enabled (or disabled since): no job runs
    # Its binding goes before it (a deleted account's binding can no longer be named); with no
    # account there is nothing left, and no need to look through every region's jobs.
    if iam.get_service_account(clients, email) is None:
        return deleted, kept
    try:
        others = _jobs_using(ctx, email)
    except ApiDisabled:
        others = []
    if others:
        kept.append(f"service account {email} and its {SCHEDULER_ROLE} binding: "
                    f"other schedules use it ({', '.join(others)})")
        return deleted, kept
    if iampolicy.ensure(lambda: resourcemanager.get_iam_policy(clients),
                        lambda p: resourcemanager.set_iam_policy(clients, p),
                        remove=[(SCHEDULER_ROLE, f"serviceAccount:{email}")]):
        deleted.append(f"project role binding {SCHEDULER_ROLE} of {email}")
    if iam.delete_service_account(clients, email):
        deleted.append(f"service account {email}")
    return deleted, kept


def _jobs_using(ctx, email: str) -> list[str]:
    """Jobs of other deployments (any Cloud Scheduler region) that run as `email`."""
    ours = set(job_ids(ctx.cfg).values())
    return [job["name"].rsplit("/", 1)[-1]
            for region in scheduler.list_locations(ctx.clients)
            for job in scheduler.list_jobs(ctx.clients, region)
            if job["name"].rsplit("/", 1)[-1] not in ours
            and ((job.get("httpTarget") or {}).get("oauthToken") or {}).get("serviceAccountEmail") == email]


def savings(cfg, current: dict | None) -> dict:
    """What pausing saves: per paused hour, for a typical timetable, and for the one set."""
    hourly = _instance_hourly(cfg)
    nights_weekends = paused_hours_per_week(parse_when("mon-fri 20:00", "pause"), parse_when("mon-fri 07:00", "resume"))
    weekends = paused_hours_per_week(parse_when("fri 20:00", "pause"), parse_when("mon 07:00", "resume"))
    out = {
        "instance_hourly_usd": round(hourly, 4),
        "instance_monthly_usd": round(hourly * cost.HOURS_PER_MONTH, 2),
        "examples": [
            {"timetable": "weekends (fri 20:00 - mon 07:00)", "paused_hours_per_week": weekends,
             "monthly_saving_usd": monthly_saving(cfg, weekends)},
            {"timetable": "weeknights and weekends (mon-fri 20:00 - 07:00)", "paused_hours_per_week": nights_weekends,
             "monthly_saving_usd": monthly_saving(cfg, nights_weekends)},
        ],
        "note": "a paused instance still pays for its storage, backups and IP address",
    }
    if current and current.get("monthly_saving_usd") is not None:
        out["schedule"] = current
    return out


def plan_line(cfg, current: dict | None = None) -> str:
    """The lines for `plan`: what the schedule set (`show()`'s answer) saves and whether it halts
    backups, or what a typical one would save."""
    if current and current.get("monthly_saving_usd") is not None:
        p, r = current["pause"], current["resume"]
        note = current.get("backups_note")
        return (f"  Pause schedule: pause {p['when']}, resume {r['when']} ({p['time_zone']}), about "
                f"${current['monthly_saving_usd']:.2f}/month saved; see mlflow-gcp cost."
                + (f"\n  Note: {note}." if note else ""))
    example = savings(cfg, None)["examples"][1]
    note = backups_note(parse_when("mon-fri 20:00", "pause"), parse_when("mon-fri 07:00", "resume"))
    return (f"  A pause schedule (mlflow-gcp schedule set --pause 'mon-fri 20:00' --resume 'mon-fri 07:00') "
            f"would save about ${example['monthly_saving_usd']:.2f}/month; see mlflow-gcp cost."
            + (f"\n  Note: with it {note}." if note else ""))
