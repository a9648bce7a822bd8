"""Old experiments' artifact locations, rewritten to be served by the server.

A server that ran without artifact proxying (the old scripts' MLflow 2.9.2) stored locations such
as `gs://BUCKET/artifacts/3` and `gs://BUCKET/artifacts/3/<run>/artifacts`: MLflow clients read
those from the bucket themselves, so a client that may only invoke the private server cannot. Our
server proxies artifacts with ARTIFACT_ROOT as the destination, and `mlflow-artifacts:/REST`
resolves to `ARTIFACT_ROOT/REST`: rewriting the prefix `ARTIFACT_ROOT/` to `mlflow-artifacts:/`
names the very same objects, now through the server. Locations elsewhere are left alone.

Dry run by default (counts only); `--apply` rewrites everything in one transaction. It is an
ordinary UPDATE, reversible by the opposite rewrite, but take a backup first anyway.
"""

from __future__ import annotations

import sqlalchemy

PROXIED = "mlflow-artifacts:/"
# (table, column) holding artifact locations, in the MLflow releases that have them.
COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
LABELS = {"experiments": "experiment locations", "runs": "run artifact URIs",
          "model_versions": "model version locations", "logged_models": "logged model locations"}


def prefix_of(artifact_root: str) -> str:
    if not artifact_root.startswith("gs://"):
        raise ValueError(f"ARTIFACT_ROOT {artifact_root!r} is not a gs:// location")
    return artifact_root.rstrip("/") + "/"


def _present(conn) -> list[tuple[str, str]]:
    inspector = sqlalchemy.inspect(conn)
    tables = set(inspector.get_table_names())
    return [(t, c) for t, c in COLUMNS
            if t in tables and c in {col["name"] for col in inspector.get_columns(t)}]


def _matching(column: str) -> str:
    # substr, not LIKE: bucket names may contain "_", a LIKE wildcard.
    return f"substr({column}, 1, :n) = :prefix"


def relocate(engine, artifact_root: str, *, apply: bool) -> dict[str, int]:
    """{"table.column": rows under ARTIFACT_ROOT/}; rewritten when `apply`, in one transaction."""
    prefix = prefix_of(artifact_root)
    params = {"n": len(prefix), "prefix": prefix, "proxied": PROXIED}
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for table, column in _present(conn):
            where = _matching(column)
            counts[f"{table}.{column}"] = conn.execute(
                sqlalchemy.text(f"SELECT count(*) FROM {table} WHERE {where}"), params).scalar() or 0
            if apply and counts[f"{table}.{column}"]:
                conn.execute(sqlalchemy.text(
                    f"UPDATE {table} SET {column} = :proxied || substr({column}, :n + 1) WHERE {where}"), params)
    return counts


def summary(counts: dict[str, int], artifact_root: str, *, applied: bool) -> str:
    by_label: dict[str, int] = {}
    for key, n in counts.items():
        label = LABELS[key.split(".", 1)[0]]
        by_label[label] = by_label.get(label, 0) + n
    total = sum(by_label.values())
    parts = ", ".join(f"{n} {label}" for label, n in by_label.items())
    head = f"{total} artifact location(s) under {prefix_of(artifact_root)} ({parts})"
    if applied:
        return f"relocate-artifacts: rewrote {head} to {PROXIED}..."
    return (f"relocate-artifacts (dry run, nothing changed): {head} would become {PROXIED}...; "
            "back up the database, then run it with --apply")
