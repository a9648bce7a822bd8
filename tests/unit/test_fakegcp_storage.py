"""Cloud Storage buckets, bucket IAM and objects in the fake, through googleapiclient and the
google-cloud-storage library."""

from __future__ import annotations

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs
from googleapiclient.errors import HttpError

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401

P = "proj-gcs"
BUCKET = {
    "name": "mlflow-artifacts-x", "location": "europe-west1", "labels": {"app": "mlflow"},
    "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}, "publicAccessPrevention": "enforced"},
    "softDeletePolicy": {"retentionDurationSeconds": "604800"},
    "lifecycle": {"rule": [{"action": {"type": "SetStorageClass", "storageClass": "NEARLINE"},
                            "condition": {"age": 30, "matchesStorageClass": ["STANDARD"]}}]},
}


@pytest.fixture(autouse=True)
def _polls_only(fake_gcp):
    # These test each API's shapes and rules; Google's timing (durations, propagation) has its
    # own tests (test_fakegcp_core.py, test_fakegcp_timing.py) and is on everywhere else.
    fake_gcp.strict(False)


@pytest.fixture
def st(gcp_client):
    return gcp_client("storage", "v1")


@pytest.fixture
def bucket(st):
    return st.buckets().insert(project=P, body=BUCKET).execute()


def test_insert_get_reflect_settings(st, bucket):
    got = st.buckets().get(bucket="mlflow-artifacts-x").execute()
    assert got["location"] == "EUROPE-WEST1" and got["locationType"] == "region"
    assert got["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"] is True
    assert got["iamConfiguration"]["bucketPolicyOnly"]["enabled"] is True
    assert got["iamConfiguration"]["publicAccessPrevention"] == "enforced"
    assert got["softDeletePolicy"]["retentionDurationSeconds"] == "604800"
    assert got["lifecycle"] == BUCKET["lifecycle"] and got["labels"] == {"app": "mlflow"}
    assert got["projectNumber"].isdigit() and got["metageneration"] == "1"
    assert [b["name"] for b in st.buckets().list(project=P).execute()["items"]] == ["mlflow-artifacts-x"]


def test_names_are_global_and_checked(st, bucket):
    with pytest.raises(HttpError) as info:
        st.buckets().insert(project="someone-else", body={"name": "mlflow-artifacts-x"}).execute()
    assert info.value.status_code == 409 and b"not available" in info.value.content
    with pytest.raises(HttpError) as info:
        st.buckets().insert(project=P, body={"name": "Bad_Name"}).execute()
    assert info.value.status_code == 400


def test_patch_merges_and_bumps_metageneration(st, bucket):
    got = st.buckets().patch(bucket="mlflow-artifacts-x", body={"labels": {"team": "ml"}}).execute()
    assert got["labels"] == {"app": "mlflow", "team": "ml"} and got["metageneration"] == "2"
    assert got["lifecycle"] == BUCKET["lifecycle"]
    with pytest.raises(HttpError) as info:
        st.buckets().patch(bucket="mlflow-artifacts-x", ifMetagenerationMatch="1", body={"labels": {}}).execute()
    assert info.value.status_code == 412
    with pytest.raises(HttpError) as info:
        st.buckets().patch(bucket="mlflow-artifacts-x", body={"location": "US"}).execute()
    assert info.value.status_code == 400
    with pytest.raises(HttpError) as info:
        st.buckets().patch(bucket="mlflow-artifacts-x", body={"softDeletePolicy": {"retentionDurationSeconds": "60"}}).execute()
    assert info.value.status_code == 400


def test_iam_policy_with_etag(st, bucket, gcp_client):
    policy = st.buckets().getIamPolicy(bucket="mlflow-artifacts-x").execute()
    with pytest.raises(HttpError) as info:  # the account does not exist yet
        st.buckets().setIamPolicy(bucket="mlflow-artifacts-x", body={**policy, "bindings": [
            {"role": "roles/storage.objectAdmin", "members": [f"serviceAccount:sa-gcs@{P}.iam.gserviceaccount.com"]}]}).execute()
    assert info.value.status_code == 400 and b"does not exist" in info.value.content
    gcp_client("iam", "v1").projects().serviceAccounts().create(
        name=f"projects/{P}", body={"accountId": "sa-gcs"}).execute()
    assert {b["role"] for b in policy["bindings"]} == {"roles/storage.legacyBucketOwner", "roles/storage.legacyBucketReader"}
    policy["bindings"].append({"role": "roles/storage.objectAdmin",
                               "members": [f"serviceAccount:sa-gcs@{P}.iam.gserviceaccount.com"]})
    new = st.buckets().setIamPolicy(bucket="mlflow-artifacts-x", body=policy).execute()
    assert new["etag"] != policy["etag"]
    with pytest.raises(HttpError) as info:  # stale etag
        st.buckets().setIamPolicy(bucket="mlflow-artifacts-x", body=policy).execute()
    assert info.value.status_code == 412
    with pytest.raises(HttpError) as info:  # public access prevention is enforced
        st.buckets().setIamPolicy(bucket="mlflow-artifacts-x", body={"bindings": [
            {"role": "roles/storage.objectViewer", "members": ["allUsers"]}]}).execute()
    assert info.value.status_code == 412


def test_delete_non_empty_is_409_then_empty_delete_works(fake_gcp, st, bucket):
    fake_gcp.api("storage").put_object("mlflow-artifacts-x", "1/abc/artifacts/model.pkl", b"x")
    with pytest.raises(HttpError) as info:
        st.buckets().delete(bucket="mlflow-artifacts-x").execute()
    assert info.value.status_code == 409
    listed = st.objects().list(bucket="mlflow-artifacts-x").execute()["items"]
    st.objects().delete(bucket="mlflow-artifacts-x", object=listed[0]["name"]).execute()
    st.buckets().delete(bucket="mlflow-artifacts-x").execute()
    assert fake_gcp.state("storage") == {}
    with pytest.raises(HttpError) as info:
        st.buckets().get(bucket="mlflow-artifacts-x").execute()
    assert info.value.status_code == 404


def test_google_cloud_storage_library_round_trip(fake_gcp):
    client = gcs.Client(project=P, credentials=AnonymousCredentials(),
                        client_options={"api_endpoint": f"{fake_gcp.url}/storage"})
    bucket = client.create_bucket("src-bucket-x", location="us-central1")
    bucket.blob("source/app.tgz").upload_from_string(b"payload", content_type="application/gzip")
    blob = client.bucket("src-bucket-x").get_blob("source/app.tgz")
    assert blob.size == 7 and blob.content_type == "application/gzip"
    assert blob.download_as_bytes() == b"payload"
    assert [b.name for b in client.list_blobs("src-bucket-x", prefix="source/")] == ["source/app.tgz"]


def test_object_listing_pages_and_prefixes(fake_gcp, st, bucket):
    for i in range(5):
        fake_gcp.api("storage").put_object("mlflow-artifacts-x", f"1/run{i}/artifacts/f.txt", b"x")
    fake_gcp.api("storage").put_object("mlflow-artifacts-x", "top.txt", b"x")
    names, token = [], None
    while True:
        page = st.objects().list(bucket="mlflow-artifacts-x", maxResults=2, pageToken=token).execute()
        names += [o["name"] for o in page["items"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert len(names) == 6 and len(set(names)) == 6
    top = st.objects().list(bucket="mlflow-artifacts-x", delimiter="/").execute()
    assert [o["name"] for o in top["items"]] == ["top.txt"] and top["prefixes"] == ["1/"]
