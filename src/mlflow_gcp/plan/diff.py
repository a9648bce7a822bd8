"""Field-level comparison of a desired body with what Google returns (pure).

Only fields we set are compared: Google adds many of its own (etags, timestamps, defaults), and a
label someone else added is theirs. Missing, empty and false are the same (the APIs omit them).
Lists of named items (env vars, containers, volumes) are matched by name, so reordering is not a
change but an extra or missing item is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow_gcp.redaction import redact_value

_ABSENT = object()


@dataclass(frozen=True)
class Change:
    path: str
    old: Any
    new: Any
    label: str | None = None

    # Values are shown redacted: what is replaced may carry a password (the old scripts' DB_URI).
    def __str__(self) -> str:
        name = f"{self.path} ({self.label})" if self.label else self.path
        return f"{name}: {show(self._safe(self.old))} -> {show(self._safe(self.new))}"

    def _safe(self, value: Any) -> Any:
        return value if value is _ABSENT else redact_value(value, self.path.rsplit("[", 1)[-1].split("]")[0])

    def as_dict(self) -> dict:
        return {"field": self.path, "setting": self.label, "from": self._safe(self.old), "to": self._safe(self.new)}


def show(value: Any) -> str:
    if value is _ABSENT or value is None:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        import json

        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)


def _empty(v: Any) -> bool:
    return v is _ABSENT or v is None or v == "" or v == [] or v == {} or v is False or v == 0


def _scalar_equal(a: Any, b: Any) -> bool:
    if _empty(a) and _empty(b):
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return a == b


def _named(items: Any) -> bool:
    return isinstance(items, list) and items and all(isinstance(i, dict) and "name" in i for i in items)


def diff(desired: Any, actual: Any, path: str = "", ignore: frozenset[str] = frozenset(),
         labels: dict[str, str] | None = None) -> list[Change]:
    labels = labels or {}
    out: list[Change] = []

    def add(p: str, old: Any, new: Any) -> None:
        out.append(Change(p, None if old is _ABSENT else old, new, labels.get(p)))

    def walk(d: Any, a: Any, p: str) -> None:
        if p in ignore:
            return
        if isinstance(d, dict):
            if not isinstance(a, dict):
                if not _empty(a):
                    add(p, a, d)
                    return
                a = {}  # absent: report each desired field on its own
            for key, value in d.items():
                walk(value, a.get(key, _ABSENT), f"{p}.{key}" if p else key)
            return
        if isinstance(d, list):
            if _empty(a) and not d:
                return
            if not isinstance(a, list):
                add(p, a, d)
                return
            if _named(d) and (not a or _named(a)):
                have = {i["name"]: i for i in a}
                for item in d:
                    if item["name"] not in have:
                        add(f"{p}[{item['name']}]", None, item)
                    else:
                        walk(item, have[item["name"]], f"{p}[{item['name']}]")
                wanted = {i["name"] for i in d}
                for name, item in have.items():
                    if name not in wanted:
                        add(f"{p}[{name}]", item, None)
                return
            if len(d) != len(a):
                add(p, a, d)
                return
            before = len(out)
            for i, (di, ai) in enumerate(zip(d, a)):
                walk(di, ai, f"{p}[{i}]")
            if len(out) > before and p in labels:
                # A rule list reads better whole than element by element.
                del out[before:]
                add(p, a, d)
            return
        if not _scalar_equal(d, a):
            add(p, a, d)

    walk(desired, actual, path)
    return out


def changed_sections(changes: list[Change], depth: int = 1) -> set[str]:
    """Top-level (or depth-level) keys touched, e.g. {"settings.backupConfiguration"}."""
    out = set()
    for c in changes:
        parts = c.path.replace("[", ".[").split(".")
        out.add(".".join(parts[:depth]))
    return out
