"""A local, append-only record of what each `up` applied: .mlflow-gcp/history.jsonl next to the
config file, one JSON object per line (time, resources changed, revision, image digest)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

DIRNAME = ".mlflow-gcp"
FILENAME = "history.jsonl"


def path_for(config_file: Path) -> Path:
    return Path(config_file).resolve().parent / DIRNAME / FILENAME


def append(config_file: Path, record: dict) -> Path:
    path = path_for(config_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **record}
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
    return path


def read(config_file: Path) -> list[dict]:
    path = path_for(config_file)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
