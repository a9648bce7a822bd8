"""The image tag names the server's source as well as its MLflow version, against the fake of
Google's APIs: a new mlflow-gcp source is a new image that `up` builds and rolls out, the same
source builds nothing, and images tagged before (MLflow version only) still report their version."""

from __future__ import annotations

import re
import shutil

import pytest

from mlflow_gcp import config, image_source
from mlflow_gcp.ops import status

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401
from tests.integration.test_deploy_up import PROJECT, SERVICE, make_cfg, make_ctx, plan, up

REPO = f"europe-west9-docker.pkg.dev/{PROJECT}/mlflow/mlflow-gcp"


def _served(fake) -> str:
    return fake.state("run")[SERVICE]["template"]["containers"][0]["image"]


def _builds(fake) -> list[str]:
    return [r.method_id for r in fake.mutating_requests() if r.method_id.startswith("cloudbuild.")]


def _fix_the_server(checkout) -> None:
    path = checkout / "src" / "mlflow_gcp" / "server" / "fastpath.py"
    path.write_text(path.read_text() + "\n# a fix\n")


@pytest.fixture
def source_copy(tmp_path, monkeypatch):
    """A copy of this checkout's build context that the test may edit; packed afresh, as by a new
    process, once at the start and again after each image_source.forget()."""
    root = image_source.source_root()
    copy = tmp_path / "checkout"
    copy.mkdir()
    for name in ("Dockerfile", "pyproject.toml", "constraints.txt", "README.md", ".dockerignore"):
        if (root / name).is_file():
            shutil.copy2(root / name, copy / name)
    shutil.copytree(root / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    monkeypatch.setattr(image_source, "source_root", lambda: copy)
    image_source.forget()
    yield copy
    image_source.forget()


def test_the_tag_is_the_mlflow_version_and_the_source_digest(source_copy):
    tag = make_cfg().image_uri.rsplit(":", 1)[1]
    assert re.fullmatch(rf"{re.escape(config.MLFLOW_VERSION)}-[0-9a-f]{{12}}", tag)
    import hashlib

    assert tag.endswith(hashlib.sha256(image_source.source_tarball(source_copy)).hexdigest()[:12])
    # A given image is deployed as given.
    given = "ghcr.io/acme/mlflow:3.17.2"
    assert make_cfg(service__image=given).image_uri == given


def test_a_second_up_with_the_same_source_builds_nothing(fake_gcp, source_copy):
    up(make_cfg())
    assert len(fake_gcp.state("cloudbuild")) == 1
    image_source.forget()  # a new process, same files
    fake_gcp.clear_log()
    assert plan(make_cfg()).empty
    up(make_cfg())
    assert fake_gcp.mutating_requests() == []
    assert _served(fake_gcp).startswith(make_cfg().image_uri + "@sha256:")


def test_a_changed_source_builds_and_rolls_out_a_new_image(fake_gcp, source_copy):
    up(make_cfg())
    old_uri, old_served = make_cfg().image_uri, _served(fake_gcp)
    _fix_the_server(source_copy)
    image_source.forget()  # the upgraded package, in a new process
    cfg = make_cfg()
    assert cfg.image_uri != old_uri and cfg.service.mlflow_version == config.MLFLOW_VERSION

    p = plan(cfg)
    assert [(a.kind, a.verb) for a in p.changes] == [
        ("image", "create"), ("Cloud Run job", "update"), ("schema migration", "run"), ("Cloud Run service", "update")]
    fake_gcp.clear_log()
    up(cfg)
    assert _builds(fake_gcp) == ["cloudbuild.projects.builds.create"]
    builds = list(fake_gcp.state("cloudbuild").values())
    assert builds[-1]["images"] == [cfg.image_uri]
    assert _served(fake_gcp).startswith(cfg.image_uri + "@sha256:") and _served(fake_gcp) != old_served
    job = fake_gcp.modules["run"].jobs[f"projects/{PROJECT}/locations/europe-west9/jobs/mlflow-tracking-migrate"]
    assert job["template"]["template"]["containers"][0]["image"] == _served(fake_gcp)
    # The new source went up, named by its digest as the tag is.
    obj = builds[-1]["source"]["storageSource"]["object"]
    assert obj.endswith(f"source-{image_source.packed()[1][:16]}.tar.gz")
    # The previous image keeps its tag: a rollback can still point at it.
    tags = [t for i in fake_gcp.modules["artifactregistry"].images.values() for t in i["tags"]]
    assert sorted(tags) == sorted([old_uri.rsplit(":", 1)[1], cfg.image_uri.rsplit(":", 1)[1]])
    fake_gcp.clear_log()
    assert plan(cfg).empty


def test_a_deployment_tagged_with_the_mlflow_version_only_reports_it_and_is_rebuilt(fake_gcp, gcp_client,
                                                                                    source_copy):
    # What an older mlflow-gcp deployed: `mlflow-gcp:3.17.2`, pinned by digest.
    gcp_client("artifactregistry", "v1").projects().locations().repositories().create(
        parent=f"projects/{PROJECT}/locations/europe-west9", repositoryId="mlflow", body={"format": "DOCKER"}).execute()
    old = fake_gcp.modules["artifactregistry"].add_image(f"{REPO}:{config.MLFLOW_VERSION}")
    old_served = old["uri"].replace("@", f":{config.MLFLOW_VERSION}@")
    up(make_cfg(service__image=old_served))
    assert fake_gcp.state("cloudbuild") == {}
    served = status.gather(make_ctx(make_cfg()))["service"]
    assert served["image"] == old_served and served["mlflow_version"] == config.MLFLOW_VERSION

    # This release, same MLflow: its tag is missing, so it is built and rolled out.
    fake_gcp.clear_log()
    up(make_cfg())
    assert _builds(fake_gcp) == ["cloudbuild.projects.builds.create"]
    served = status.gather(make_ctx(make_cfg()))["service"]
    assert served["image"].startswith(make_cfg().image_uri + "@sha256:")
    assert served["mlflow_version"] == config.MLFLOW_VERSION


def test_upgrade_to_the_served_mlflow_points_at_up_when_the_source_changed(fake_gcp, source_copy, tmp_path,
                                                                          monkeypatch, capsys):
    from mlflow_gcp.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlflow-gcp.toml").write_text(config.to_toml(make_cfg()))
    assert cli_main.main(["up", "--yes"]) == 0
    capsys.readouterr()
    assert cli_main.main(["upgrade", "--mlflow-version", config.MLFLOW_VERSION, "--yes"]) == 0
    assert capsys.readouterr().out.strip() == f"Already on MLflow {config.MLFLOW_VERSION}."

    _fix_the_server(source_copy)
    image_source.forget()
    fake_gcp.clear_log()
    assert cli_main.main(["upgrade", "--mlflow-version", config.MLFLOW_VERSION, "--yes"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Already on MLflow {config.MLFLOW_VERSION}.")
    assert "`mlflow-gcp up` builds and rolls out this one" in out
    assert fake_gcp.mutating_requests() == []
