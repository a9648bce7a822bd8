"""What the old scripts (or hand-made setups) leave behind that a private deployment no longer
needs: downloaded service-account keys, and the default compute account's broad roles (the old
server ran as it). `doctor` reports each with the command that removes it; nothing here removes
anything, and `up` never does: other workloads of the project may still rely on them.
"""

from __future__ import annotations

from mlflow_gcp.gcp import iam

# Roles the old scripts' server and client accounts held; our server runs as its own account.
BROAD_ROLES = ("roles/owner", "roles/editor", "roles/storage.admin", "roles/storage.objectAdmin",
               "roles/cloudsql.admin", "roles/cloudsql.client", "roles/secretmanager.secretAccessor")
# The old scripts' client account (create_mlflow_access.sh): a key file for every user.
OLD_CLIENT_ACCOUNT = "mlflow-client"


def compute_account(project_number: str) -> str:
    return f"{project_number}-compute@developer.gserviceaccount.com"


def key_findings(clients, project: str, ours: set[str]) -> list[tuple[str, str]]:
    """(what, command) for each user-managed key of the project's accounts, ours excepted."""
    out = []
    for account in iam.list_service_accounts(clients):
        email = account.get("email", "")
        if email in ours:
            continue
        for key in iam.user_managed_keys(clients, email):
            key_id = key.get("name", "").rsplit("/", 1)[-1]
            out.append((f"{email} has a user-managed key {key_id[:12]} (a key file that never expires)",
                        f"gcloud iam service-accounts keys delete {key_id} --iam-account={email} "
                        f"--project={project}"))
        if email.split("@", 1)[0] == OLD_CLIENT_ACCOUNT:
            out.append((f"{email} is the old scripts' client account: clients now use their own "
                        "identity (MLFLOW_TRACKING_AUTH=gcp)",
                        f"gcloud iam service-accounts delete {email} --project={project}"))
    return out


def binding_findings(policy: dict, project: str, members: list[str], where: str = "project") -> list[tuple[str, str]]:
    """(what, command) for each broad role `members` hold in `policy` (the project's, or a
    bucket's when `where` is gs://BUCKET)."""
    out = []
    for binding in policy.get("bindings") or []:
        role = binding.get("role", "")
        if role not in BROAD_ROLES:
            continue
        for member in binding.get("members") or []:
            if member not in members:
                continue
            if where == "project":
                command = (f"gcloud projects remove-iam-policy-binding {project} --member={member} "
                           f"--role={role}")
            else:
                command = (f"gcloud storage buckets remove-iam-policy-binding {where} --member={member} "
                           f"--role={role}")
            out.append((f"{member.split(':', 1)[-1]} holds {role} on the {'project' if where == 'project' else where}",
                        command))
    return out
