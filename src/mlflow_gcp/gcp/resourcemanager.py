"""Resource Manager: the project number and the project IAM policy."""

from __future__ import annotations


def project_number(clients) -> str:
    api = clients.api("cloudresourcemanager").projects()
    project = clients.execute(api.get(projectId=clients.project), f"reading project {clients.project}")
    return str(project["projectNumber"])


def get_iam_policy(clients) -> dict:
    api = clients.api("cloudresourcemanager").projects()
    return clients.execute(
        api.getIamPolicy(resource=clients.project, body={"options": {"requestedPolicyVersion": 3}}),
        f"reading the IAM policy of project {clients.project}",
    )


def set_iam_policy(clients, policy: dict) -> dict:
    api = clients.api("cloudresourcemanager").projects()
    return clients.execute(
        api.setIamPolicy(resource=clients.project, body={"policy": policy}),
        f"updating the IAM policy of project {clients.project}",
    )
