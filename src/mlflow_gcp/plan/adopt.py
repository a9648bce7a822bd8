"""Taking over what someone else made (the old bash/gcloud scripts, or by hand): what `plan` must
say before `up` changes it, and the current database password, read from the service it replaces.

Everything here is read-only and pure where it can be; the steps decide when to call it.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from mlflow_gcp.config import Config

IMPORT_FLAG = "--import-db-password"
# Database users every Cloud SQL PostgreSQL instance has, or Google's own.
_BUILT_IN_USERS = ("postgres", "cloudsqlsuperuser", "cloudsqladmin", "cloudsqlreplica")


def service_env(raw: dict | None) -> dict[str, str]:
    """The plain env of a Cloud Run v2 service's first container (secret references left out)."""
    containers = ((raw or {}).get("template") or {}).get("containers") or [{}]
    return {e["name"]: e.get("value", "") for e in containers[0].get("env") or [] if "value" in e}


def password_in_env(env: dict[str, str]) -> tuple[str, str] | None:
    """(where, password) from a DB_URI with a password (the old scripts) or a plain DB_PASSWORD."""
    uri = env.get("DB_URI") or env.get("MLFLOW_BACKEND_STORE_URI") or ""
    if uri:
        parts = urlsplit(uri)
        if parts.password:
            return "DB_URI", unquote(parts.password)
    if env.get("DB_PASSWORD"):
        return "DB_PASSWORD", env["DB_PASSWORD"]
    return None


def user_in_env(env: dict[str, str]) -> str | None:
    uri = env.get("DB_URI") or env.get("MLFLOW_BACKEND_STORE_URI") or ""
    return unquote(urlsplit(uri).username) if uri and urlsplit(uri).username else env.get("DB_USER")


def other_users(users: list[dict], ours: str) -> list[str]:
    """Users someone made on the instance besides the built-in ones and ours: the likely owners
    of an existing schema."""
    names = [u.get("name", "") for u in users if (u.get("type") or "BUILT_IN") == "BUILT_IN"]
    return sorted(n for n in names if n and n != ours and n not in _BUILT_IN_USERS)


def missing_user_note(cfg: Config, candidates: list[str], service_user: str | None) -> str:
    db = cfg.database
    likely = service_user if service_user in candidates else (candidates[0] if len(candidates) == 1 else None)
    named = (f"the service {cfg.service.name} connects as {service_user!r}" if service_user
             else f"it has the user(s) {', '.join(repr(c) for c in candidates)}")
    text = (f"database {db.database} already exists and user {db.user!r} does not; {named}. On Cloud "
            f"SQL a new user cannot alter tables another user owns, so migrating the existing "
            f"MLflow tables as {db.user!r} would fail (the migration job checks the owner and stops "
            f"before changing anything).")
    if likely:
        text += f" To adopt the owner: set database.user = \"{likely}\" in mlflow-gcp.toml."
    return text


def password_change_note(cfg: Config, service_raw: dict | None) -> str:
    """What stops working when an adopted user's password is replaced."""
    db = cfg.database
    users = []
    env = service_env(service_raw)
    found = password_in_env(env)
    if found and user_in_env(env) in (db.user, None):
        users.append(f"the running Cloud Run service {cfg.service.name} (its {found[0]}), until "
                     "the new server replaces it later in this run")
    users += ["the old scripts' .env (USER_PASSWORD)",
              f"anyone using `gcloud sql connect {db.instance} --user={db.user}` or another client "
              "with that password"]
    keep = (f"to keep the current password instead, rerun with {IMPORT_FLAG}: it is read from the "
            f"service's {found[0]}" if found else
            f"to keep the current password instead, rerun with {IMPORT_FLAG} (it is asked for)")
    return (f"the existing user {db.user!r} gets a NEW generated password (kept only in Secret "
            f"Manager, secret {cfg.secret_id}); what uses the current one stops working: "
            + "; ".join(users) + f". {keep}, stored in Secret Manager and never printed.")


def public_removal_note(cfg: Config, members: list[str]) -> str:
    """What clients of a public server must do once allUsers loses the invoker role."""
    granted = ", ".join(cfg.access.members) if cfg.access.members else "nobody yet (see `mlflow-gcp access grant`)"
    return (f"{' and '.join(members)} lose roles/run.invoker: the server stops being public and "
            f"answers 403 to every client without a Google ID token. Who may call it: {granted}. "
            "Every client then needs `export MLFLOW_TRACKING_AUTH=gcp` and the plugin: on MLflow 3, "
            "`pip install mlflow-gcp`; to stay on MLflow 2.x (2.9 or later), only the plugin, "
            "`pip install ./client-dist` from an mlflow-gcp checkout (package mlflow-gcp-client: "
            "google-auth and requests, MLflow left as it is); and Google credentials that can mint "
            "an ID token (docs/client.md, \"Where tokens come from\").")


def lifecycle_note(cfg: Config, current_rules: list[dict], want_rules: list[dict]) -> str | None:
    """Why a Delete rule over the whole bucket is replaced (the old scripts' 90-day rule)."""
    broad = [r for r in current_rules
             if (r.get("action") or {}).get("type") == "Delete"
             and not (r.get("condition") or {}).get("matchesPrefix")
             and r not in want_rules]
    if not broad:
        return None
    ages = ", ".join(str((r.get("condition") or {}).get("age", "?")) for r in broad)
    lc = cfg.artifacts.lifecycle
    instead = f"{lc.action} after {lc.days} days" + (f" under {lc.prefix}" if lc.prefix else " (nothing is deleted)"
                                                      if lc.action == "archive" else "")
    return (f"the Delete rule over the whole bucket (after {ages} days) is replaced: it deletes "
            "every artifact of that age, including the files of registered model versions, which "
            f"MLflow then still lists but cannot load. Instead (artifacts.lifecycle): {instead}.")
