"""The old scripts' deployment on the fake of Google's APIs, made by the real gcloud CLI with the
commands of the scripts the seed README describes (setup_mlflow_gcp.sh, deploy_mlflow.sh,
create_mlflow_access.sh): Cloud SQL `mlflow-db` (PostgreSQL 15) with database `mlflow` and a
hand-made user whose password sits in the public service's DB_URI, a bucket with a 90-day Delete
rule over everything, Artifact Registry `mlflow-repo`, a public Cloud Run service running MLflow
2.9.2 as the default compute account (`gcloud run deploy --allow-unauthenticated`, served by the
fake's Cloud Run v1 view), and an `mlflow-client` account with a user-managed key.

Not a gcloud command: the table ownership the old server left in PostgreSQL (it created the
tables as the hand-made user), which only the fake's sqladmin can be told about.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

from tests.fakegcp.core.api import project_number
from tests.fakegcp.gcloud import run_gcloud


@dataclass(frozen=True)
class Seed:
    project: str = "acme-ml-prod"
    region: str = "europe-west9"
    instance: str = "mlflow-db"
    database: str = "mlflow"
    user: str = "mlflow-bek"
    password: str = "Seed-pass_1"  # the .env's USER_PASSWORD
    root_password: str = "root-Pass_1"  # the .env's ROOT_PASSWORD
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


def seed_deployment(fake, seed: Seed = Seed()) -> Seed:
    # The old deployment was made long ago: gcloud waits in real time, which does not move the
    # fake's clock, so Google's timing is off while it is made, and its time has passed after.
    strict = fake.realistic_durations
    fake.strict(False)
    try:
        _made_by_gcloud(fake, seed)
    finally:
        fake.strict(strict)
    fake.advance(max(fake.account_propagation_seconds, fake.api_propagation_seconds))
    return seed


def _made_by_gcloud(fake, seed: Seed) -> None:
    p, r = seed.project, seed.region
    with tempfile.TemporaryDirectory(prefix="seed-gcloud-") as tmp:
        def gcloud(*args: str):
            return run_gcloud(fake.url, *args, project=p, config_dir=tmp, parse_json=False, timeout=300)

        # setup_mlflow_gcp.sh (`gcloud config set project` is CLOUDSDK_CORE_PROJECT here)
        gcloud("sql", "instances", "create", seed.instance, "--database-version=POSTGRES_15",
               "--tier=db-f1-micro", f"--region={r}", f"--root-password={seed.root_password}",
               "--backup-start-time=03:00", "--maintenance-window-day=SUN", "--maintenance-window-hour=4")
        gcloud("sql", "databases", "create", seed.database, f"--instance={seed.instance}")
        gcloud("sql", "users", "create", seed.user, f"--instance={seed.instance}",
               f"--password={seed.password}")
        # The old server created the tables, connected as the hand-made user: they are its own.
        fake.api("sqladmin").set_table_owner(p, seed.instance, seed.database, seed.user)
        lifecycle = os.path.join(tmp, "lifecycle.json")
        with open(lifecycle, "w") as fh:
            json.dump({"rule": [{"action": {"type": "Delete"}, "condition": {"age": 90}}]}, fh)
        gcloud("storage", "buckets", "create", f"gs://{seed.bucket}", f"--location={r}")
        gcloud("storage", "buckets", "update", f"gs://{seed.bucket}", f"--lifecycle-file={lifecycle}")
        for role in ("roles/storage.objectAdmin", "roles/cloudsql.client"):
            gcloud("projects", "add-iam-policy-binding", p,
                   f"--member=serviceAccount:{seed.compute_account}", f"--role={role}")

        # deploy_mlflow.sh (the image build and push are Docker's, not gcloud's)
        gcloud("artifacts", "repositories", "create", "mlflow-repo", "--repository-format=docker",
               f"--location={r}")
        gcloud("run", "deploy", seed.service, f"--image={seed.image}", f"--region={r}",
               "--platform=managed", "--allow-unauthenticated", "--port=8080", "--max-instances=10",
               f"--add-cloudsql-instances={p}:{r}:{seed.instance}",
               f"--set-env-vars=DB_URI={seed.db_uri},ARTIFACT_ROOT=gs://{seed.bucket}/artifacts")

        # create_mlflow_access.sh
        gcloud("iam", "service-accounts", "create", "mlflow-client", "--display-name=MLflow client")
        gcloud("projects", "add-iam-policy-binding", p, f"--member=serviceAccount:{seed.client_account}",
               "--role=roles/storage.objectAdmin")
        gcloud("iam", "service-accounts", "keys", "create", os.path.join(tmp, "mlflow-client-key.json"),
               f"--iam-account={seed.client_account}")
