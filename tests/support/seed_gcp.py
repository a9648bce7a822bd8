"""The old scripts' deployment on the fake of Google's APIs, made with the REST calls their gcloud
commands make (setup_mlflow_gcp.sh, deploy_mlflow.sh, create_mlflow_access.sh in the seed README):
Cloud SQL `mlflow-db` (PostgreSQL 15) with database `mlflow` and a hand-made user whose password
sits in the public service's DB_URI, a bucket with a 90-day Delete rule over everything,
Artifact Registry `mlflow-repo`, a public Cloud Run service running MLflow 2.9.2 as the default
compute account, and an `mlflow-client` account with a user-managed key.

Made with googleapiclient, not the gcloud CLI itself: the fake does not serve the Cloud Run v1
(Knative) writes `gcloud run deploy` makes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.fakegcp.client import build_client
from tests.fakegcp.core.api import project_number


@dataclass(frozen=True)
class Seed:
    project: str = "acme-ml-prod"
    region: str = "europe-west9"
    instance: str = "mlflow-db"
    database: str = "mlflow"
    user: str = "mlflow-bek"
    password: str = "Seed-pass_1"  # the .env's USER_PASSWORD
    service: str = "mlflow-tracking"
    image: str = "europe-west9-docker.pkg.dev/acme-ml-prod/mlflow-repo/mlflow-server:latest"

    @property
    def bucket(self) -> str:
        return f"{self.project}-mlflow-artifacts"

    @property
    def compute_account(self) -> str:
        return f"{project_number(self.project)}-compute@developer.gserviceaccount.com"

    @property
    def client_account(self) -> str:
        return f"mlflow-client@{self.project}.iam.gserviceaccount.com"

    @property
    def db_uri(self) -> str:
        return (f"postgresql://{self.user}:{self.password}@/{self.database}"
                f"?host=/cloudsql/{self.project}:{self.region}:{self.instance}")


def _until_done(fake, get, what: str, tries: int = 40) -> dict:
    for _ in range(tries):
        op = get()
        if op.get("done") or op.get("status") == "DONE":
            return op
        fake.advance(60)  # the old deployment was made long ago: Google's time passes
    raise AssertionError(f"{what} never finished on the fake")


def seed_deployment(fake, seed: Seed = Seed()) -> Seed:
    p, root = seed.project, fake.url
    sql = build_client(root, "sqladmin", "v1")
    op = sql.instances().insert(project=p, body={
        "name": seed.instance, "databaseVersion": "POSTGRES_15", "region": seed.region,
        "rootPassword": "root-Pass_1",
        "settings": {"tier": "db-f1-micro", "backupConfiguration": {"enabled": True, "startTime": "03:00"},
                     "maintenanceWindow": {"day": 7, "hour": 4}},
    }).execute()
    _until_done(fake, lambda: sql.operations().get(project=p, operation=op["name"]).execute(), "the instance")
    for body, call in (({"name": seed.database}, sql.databases()),
                       ({"name": seed.user, "password": seed.password}, sql.users())):
        op = call.insert(project=p, instance=seed.instance, body=body).execute()
        _until_done(fake, lambda: sql.operations().get(project=p, operation=op["name"]).execute(), str(body["name"]))
    # The old server created the tables, connected as the hand-made user: they are its own.
    fake.api("sqladmin").set_table_owner(p, seed.instance, seed.database, seed.user)

    storage = build_client(root, "storage", "v1")
    storage.buckets().insert(project=p, body={
        "name": seed.bucket, "location": seed.region.upper(),
        "lifecycle": {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 90}}]},
    }).execute()

    registry = build_client(root, "artifactregistry", "v1")
    op = registry.projects().locations().repositories().create(
        parent=f"projects/{p}/locations/{seed.region}", repositoryId="mlflow-repo",
        body={"format": "DOCKER"}).execute()
    _until_done(fake, lambda: registry.projects().locations().operations().get(name=op["name"]).execute(), "the repo")

    run = build_client(root, "run", "v2")
    services = run.projects().locations().services()
    env = [{"name": "DB_URI", "value": seed.db_uri},
           {"name": "ARTIFACT_ROOT", "value": f"gs://{seed.bucket}/artifacts"}]
    op = services.create(parent=f"projects/{p}/locations/{seed.region}", serviceId=seed.service, body={
        "template": {
            "scaling": {"maxInstanceCount": 10},
            "volumes": [{"name": "cloudsql", "cloudSqlInstance": {
                "instances": [f"{p}:{seed.region}:{seed.instance}"]}}],
            "containers": [{"image": seed.image, "ports": [{"containerPort": 8080}], "env": env,
                            "volumeMounts": [{"name": "cloudsql", "mountPath": "/cloudsql"}]}],
        }}).execute()
    name = f"projects/{p}/locations/{seed.region}/services/{seed.service}"
    _until_done(fake, lambda: run.projects().locations().operations().get(name=op["name"]).execute(), "the service")
    services.setIamPolicy(resource=name, body={"policy": {"bindings": [
        {"role": "roles/run.invoker", "members": ["allUsers"]}]}}).execute()

    iam = build_client(root, "iam", "v1")
    iam.projects().serviceAccounts().create(name=f"projects/{p}", body={
        "accountId": "mlflow-client", "serviceAccount": {"displayName": "MLflow client"}}).execute()
    fake.advance(fake.account_propagation_seconds)  # known everywhere long before the takeover
    iam.projects().serviceAccounts().keys().create(
        name=f"projects/{p}/serviceAccounts/{seed.client_account}", body={}).execute()
    crm = build_client(root, "cloudresourcemanager", "v1")
    policy = crm.projects().getIamPolicy(resource=p, body={}).execute()
    policy.setdefault("bindings", []).extend([
        {"role": "roles/storage.objectAdmin", "members": [f"serviceAccount:{seed.compute_account}",
                                                           f"serviceAccount:{seed.client_account}"]},
        {"role": "roles/cloudsql.client", "members": [f"serviceAccount:{seed.compute_account}"]},
    ])
    crm.projects().setIamPolicy(resource=p, body={"policy": policy}).execute()
    return seed
