"""Options and rendering shared by every command group."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import click

from mlflow_gcp import config as config_mod
from mlflow_gcp.errors import UserAborted


def config_options(func: Callable) -> Callable:
    """--config, --project, --region and --set; the command receives `cfg_overrides`."""

    @click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="Config file (default: $MLFLOW_GCP_CONFIG, else ./mlflow-gcp.toml).",
    )
    @click.option("--project", default=None, help="Google Cloud project id.")
    @click.option("--region", default=None, help="Region, e.g. europe-west9.")
    @click.option(
        "--set",
        "assignments",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override any setting, e.g. --set database.tier=db-g1-small (repeatable).",
    )
    @functools.wraps(func)
    def wrapper(*args, config_file, project, region, assignments, **kwargs):
        overrides = config_mod.parse_set(assignments)
        if project:
            overrides["project"] = project
        if region:
            overrides["region"] = region
        kwargs["cfg_source"] = ConfigSource(config_file, overrides)
        return func(*args, **kwargs)

    return wrapper


class ConfigSource:
    """Where a command's config comes from; loads (and validates) only when asked."""

    def __init__(self, path: str | None, overrides: dict):
        self.path = path
        self.overrides = overrides

    @property
    def file(self):
        return config_mod.config_path(self.path)

    def load(self, require_file: bool = False) -> config_mod.Config:
        return config_mod.load(self.path, overrides=self.overrides, require_file=require_file)


def yes_option(func: Callable) -> Callable:
    return click.option("--yes", "-y", is_flag=True, help="Answer yes to every prompt.")(func)


def json_option(func: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(func)


def confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; without one, refuse unless --yes was given."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserAborted(f"{question} needs confirmation", hint="rerun with --yes")
    if not click.confirm(question, default=False):
        raise UserAborted("stopped; nothing more was changed")


def waiting_progress(say: Callable[[str], None]) -> Callable[[str, float], None]:
    """progress(what, elapsed) for long waits: one line when a wait starts, then one every 15 s
    (visible, not noisy)."""
    last: dict[str, float] = {}

    def progress(what: str, elapsed: float) -> None:
        if what not in last or elapsed - last[what] >= 15:
            last[what] = elapsed
            say(f"  waiting for {what} ({elapsed:.0f}s)")

    return progress


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], as_json: bool = False) -> None:
    """Print rows as an aligned table, or as a JSON list with --json."""
    rows = list(rows)
    if as_json:
        emit_json([{c: r.get(c) for c in columns} for r in rows])
        return
    cells = [[str(r.get(c, "") if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
