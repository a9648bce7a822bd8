"""The server image, built for real from the Dockerfile and the context `up` uploads, then run
against PostgreSQL with MLflow's own client (tests/support/oci.py: podman, the base image, and
what a locked-down sandbox needs).

Opt-in (MLFLOW_GCP_IMAGE_TEST=1): a build after any change under src/ reinstalls every dependency
(~5 min here), and a machine without python:3.11-slim makes its stand-in base first (debootstrap,
~5-15 min, once). Skipped, with the reason, where podman is missing or cannot build or run.
The image is built with MLFLOW_VERSION=3.17.1, not the lock's 3.17.2: /version then proves the
build-arg reaches pip.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
import requests

from mlflow_gcp import image_source
from tests.support import oci
from tests.support.mlflow_server import free_port

pytestmark = pytest.mark.skipif(os.environ.get("MLFLOW_GCP_IMAGE_TEST") != "1",
                                reason="builds the server image for real (~5 min): set MLFLOW_GCP_IMAGE_TEST=1")

ASKED = "3.17.1"  # a supported release other than the lock's (config.MLFLOW_VERSION)
START_TIMEOUT = 300  # seconds; container start to /health 200 includes creating the schema


@pytest.fixture(scope="module")
def podman():
    try:
        tool = oci.find()
        base = oci.ensure_base(tool)
        oci.pick_runtime(tool)
    except oci.Unavailable as err:
        pytest.skip(str(err))
    print(f"\nbase {oci.BASE}: {base}; podman {' '.join(tool.global_args + tool.run_args) or '(defaults)'}")
    return tool


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return oci.unpack_context(image_source.packed()[0], tmp_path_factory.mktemp("context"))


@pytest.fixture(scope="module")
def image(podman, context):
    tag = f"localhost/mlflow-gcp:{ASKED}-{image_source.digest()}"
    started = time.monotonic()
    built = oci.build(podman, context, tag, {"MLFLOW_VERSION": ASKED})
    assert built.returncode == 0, oci.output(built)[-3000:]
    print(f"\nbuilt {tag} in {time.monotonic() - started:.0f} s, {oci.image_size(podman, tag) / 1e9:.2f} GB")
    oci.remove_other_tags(podman, tag)  # ~1.2 GB each: keep only this source's image (and its cache)
    return tag


class Container:
    def __init__(self, podman: oci.Podman, image: str, env: dict[str, str], artifacts):
        self.podman, self.port = podman, free_port()
        env = {**env, "PORT": str(self.port), "WORKERS": "1"}
        args = ["run", "-d", "--network=host", *podman.run_args, "-v", f"{artifacts}:/artifacts"]
        for name, value in env.items():
            args += ["-e", f"{name}={value}"]
        self.started = time.monotonic()
        ran = podman(*args, image)
        assert ran.returncode == 0, oci.output(ran)
        self.id = ran.stdout.decode().strip()
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_healthy(self) -> float:
        """Seconds from `podman run` to the first /health 200."""
        while time.monotonic() - self.started < START_TIMEOUT:
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            except requests.RequestException:
                pass
            if oci.output(self.podman("inspect", "--format", "{{.State.Running}}", self.id)) != "true":
                pytest.fail(f"the container exited: {self.logs()[-3000:]}")
            time.sleep(0.2)
        pytest.fail(f"no /health 200 within {START_TIMEOUT} s: {self.logs()[-3000:]}")

    def logs(self) -> str:
        return oci.output(self.podman("logs", self.id))

    def stop(self) -> int:
        """SIGTERM, as Cloud Run stops an instance; the container's exit code."""
        self.podman("kill", "--signal", "TERM", self.id)
        code = self.podman("wait", self.id, timeout=60)
        return int(oci.output(code).splitlines()[-1])

    def remove(self) -> None:
        self.podman("rm", "-f", self.id)


def test_the_image_runs_what_it_was_asked_for(podman, image):
    user = oci.output(podman("image", "inspect", "--format", "{{.Config.User}}", image))
    assert user == "10001:10001"
    ran = podman("run", "--rm", "--network=host", *podman.run_args, "--entrypoint", "python", image,
                 "-c", "import mlflow, mlflow_gcp.server.app; print(mlflow.__version__)")
    assert ran.returncode == 0 and oci.output(ran).splitlines()[-1] == ASKED, oci.output(ran)


def test_a_version_pip_cannot_find_fails_the_build(podman, context):
    built = oci.build(podman, context, "localhost/mlflow-gcp:unbuildable", {"MLFLOW_VERSION": "3.17.99"})
    assert built.returncode != 0
    assert "The user requested (constraint) mlflow==3.17.99" in oci.output(built)  # pip's own words


def test_the_container_serves_mlflow_against_postgres(podman, image, new_database, tmp_path):
    from mlflow import MlflowClient

    db = new_database("mlflow_gcp_image")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    artifacts.chmod(0o777)  # the server runs as uid 10001
    env = {"DB_URI": db.replace("+psycopg2", ""), "ARTIFACT_ROOT": "/artifacts", "LOG_FORMAT": "json"}

    first = Container(podman, image, env, artifacts)
    try:
        cold = first.wait_healthy()
        assert requests.get(f"{first.url}/version", timeout=10).text == ASKED
        client = MlflowClient(tracking_uri=first.url)
        experiment = client.create_experiment(f"image-{uuid.uuid4().hex[:8]}")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "loss", 0.25, step=3)
        note = tmp_path / "note.txt"
        note.write_text("from the image test")
        client.log_artifact(run.info.run_id, str(note))
        assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [0.25]
        stored = list(artifacts.rglob("note.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "from the image test"
        assert first.stop() == 0, first.logs()[-3000:]
    finally:
        first.remove()

    # A restart against the migrated schema, as a Cloud Run instance starts (DB_MIGRATE=never).
    second = Container(podman, image, {**env, "DB_MIGRATE": "never"}, artifacts)
    try:
        warm = second.wait_healthy()
        client = MlflowClient(tracking_uri=second.url)
        assert client.get_metric_history(run.info.run_id, "loss")[0].step == 3
        assert client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "back"))
        assert (tmp_path / "back" / "note.txt").read_text() == "from the image test"
        logs = second.logs()
        assert second.stop() == 0, logs[-3000:]
        assert "creating the MLflow schema" not in logs
    finally:
        second.remove()
    load = os.getloadavg()[0]
    print(f"\nstart to /health 200: {cold:.1f} s with a new schema, {warm:.1f} s on a migrated one "
          f"(load average {load:.1f} on {os.cpu_count()} CPUs)")
