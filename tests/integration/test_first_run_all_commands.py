"""The README, command after command, on a brand-new project as Google really behaves: every API off,
APIs and service accounts that take minutes to be usable, operations that take their real time
(tests/fakegcp/core/timing.py, all on by default). Every command must succeed in one go, saying
what a user needs to read."""

from __future__ import annotations

from mlflow_gcp import config

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server  # noqa: F401
from tests.integration.ops_support import MEMBER, PROJECT, run_cli, workdir  # noqa: F401


def test_every_readme_command_succeeds_on_a_new_project(fake_gcp, workdir, capsys):
    fake_gcp.services_enabled_by_default = False
    start = fake_gcp.now()

    def ok(*args: str) -> str:
        code, out, err = run_cli(capsys, *args)
        assert code == 0, f"mlflow-gcp {' '.join(args)} -> {code}\n{out}\n{err}"
        return out + err

    ok("init", "--project", PROJECT, "--set", f"access.members={MEMBER}")
    out = ok("up", "--yes")
    assert "enable cloudresourcemanager.googleapis.com" in out
    assert "waiting for iam.googleapis.com, enabled recently, to answer" in out
    assert "waiting for Cloud SQL instance mlflow-db to be created" in out
    assert "export MLFLOW_TRACKING_URI=https://mlflow-tracking-" in out
    assert fake_gcp.now() - start > 15 * 60, "APIs, Cloud SQL, the build and the rollout take minutes"
    assert ok("up", "--yes").startswith("No changes.")

    out = ok("status")
    assert "mlflow-tracking" in out and "mlflow-db" in out
    out = ok("doctor")
    assert "PASS  quota project" in out and "PASS  APIs enabled" in out and "FAIL" not in out

    assert "backup" in ok("backup", "create", "--description", "first run").lower()
    assert "first run" in ok("backup", "list")
    ok("pause", "--yes")
    ok("resume")

    out = ok("schedule", "set", "--pause", "fri 20:00", "--resume", "mon 07:00")
    assert "cloudscheduler.googleapis.com" in out, "the scheduler API is enabled on first use"
    assert "fri" in ok("schedule", "show").lower()
    ok("schedule", "clear")

    ok("scale", "--max-instances", "4")
    ok("lifecycle", "show")
    ok("lifecycle", "set", "--days", "60", "--action", "archive", "--yes")

    assert "user:bob@example.com" in ok("access", "grant", "user:bob@example.com")
    assert "user:bob@example.com" in ok("access", "revoke", "user:bob@example.com")
    out = ok("access", "create-sa", "ci-jobs", "--impersonator", "user:you@example.com")
    assert f"ci-jobs@{PROJECT}.iam.gserviceaccount.com" in out

    ok("rotate-password", "--yes")
    ok("upgrade", "--mlflow-version", config.MLFLOW_VERSION, "--yes")

    out = ok("destroy", "--yes", "--confirm", PROJECT)
    for api in ("sqladmin", "run", "secretmanager", "artifactregistry"):
        assert not fake_gcp.state(api), f"{api} left after destroy: {list(fake_gcp.state(api))}"
    # The jobs' own account is the user's (made by `access create-sa`, maybe used elsewhere): kept.
    assert list(fake_gcp.state("iam")) == [f"ci-jobs@{PROJECT}.iam.gserviceaccount.com"]
    assert "Nothing to delete." in ok("destroy", "--yes", "--confirm", PROJECT)
    assert fake_gcp.internal_errors == []
