"""Cloud Storage: the artifact bucket, its IAM policy, and build-source uploads."""

from __future__ import annotations

from mlflow_gcp.errors import AlreadyExists, Conflict, NotFound
from mlflow_gcp.gcp import operations


def _buckets(clients):
    return clients.api("storage").buckets()


def get_bucket(clients, name: str) -> dict | None:
    return operations.read(clients, _buckets(clients).get(bucket=name, projection="full"), f"reading bucket {name}")


def create_bucket(clients, body: dict) -> bool:
    try:
        clients.execute(
            _buckets(clients).insert(project=clients.project, body=body), f"creating bucket {body['name']}"
        )
    except AlreadyExists:
        return False
    except Conflict as err:
        raise Conflict(f"bucket name {body['name']} is taken by another project",
                       hint="set artifacts.bucket to another name") from err
    return True


def patch_bucket(clients, name: str, body: dict) -> dict:
    return clients.execute(_buckets(clients).patch(bucket=name, body=body), f"updating bucket {name}")


def delete_bucket(clients, name: str) -> bool:
    """Delete every object, then the bucket (objects stay recoverable for the soft-delete period)."""
    objects = clients.api("storage").objects()
    what = f"emptying bucket {name}"
    try:
        token = None
        while True:
            resp = clients.execute(objects.list(bucket=name, pageToken=token), what)
            for item in resp.get("items") or []:
                try:
                    clients.execute(objects.delete(bucket=name, object=item["name"]), what)
                except NotFound:
                    pass
            token = resp.get("nextPageToken")
            if not token:
                break
        clients.execute(_buckets(clients).delete(bucket=name), f"deleting bucket {name}")
        return True
    except NotFound:
        return False


def upload(clients, bucket: str, name: str, data: bytes, content_type: str) -> dict:
    from googleapiclient.http import MediaInMemoryUpload

    media = MediaInMemoryUpload(data, mimetype=content_type, resumable=False)
    request = clients.api("storage").objects().insert(bucket=bucket, name=name, media_body=media)
    return clients.execute(
        clients.fix_media_uri(request, "storage"),
        f"uploading gs://{bucket}/{name}",
    )


def get_iam_policy(clients, bucket: str) -> dict:
    return clients.execute(
        _buckets(clients).getIamPolicy(bucket=bucket, optionsRequestedPolicyVersion=3),
        f"reading the IAM policy of bucket {bucket}",
    )


def set_iam_policy(clients, bucket: str, policy: dict) -> dict:
    return clients.execute(
        _buckets(clients).setIamPolicy(bucket=bucket, body=policy), f"updating the IAM policy of bucket {bucket}"
    )
