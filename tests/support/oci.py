"""Build and run the server image with podman, on a workstation or in a locked-down sandbox.

- The build context is the tarball `up` uploads to Cloud Build (image_source), unpacked.
- The base `python:3.11-slim` is used when present or pullable. Where Docker Hub is out of reach
  but Debian's mirror is not, a stand-in of that name is made once from Debian bookworm's own
  python3.11 (debootstrap, root only) and kept in podman's storage, so the unchanged Dockerfile
  builds against it; it is labelled as a stand-in.
- Containers run with podman's defaults when they work. Some sandboxes refuse them (crun:
  "cgroups in hybrid mode not supported"; raising RLIMIT_NOFILE/NPROC without CAP_SYS_RESOURCE);
  then runc with the cgroupfs manager and the caller's own limits is tried.
- pip inside the build trusts the host's CA bundle (mounted read-only) when there is one: an
  egress proxy's CA is then trusted by the build as by the host.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BASE = "docker.io/library/python:3.11-slim"
HOST_CA_DIR = Path("/etc/ssl/certs")
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
STAND_IN = "stand-in for python:3.11-slim: Debian bookworm python3.11, pip, python-is-python3"


class Unavailable(Exception):
    """No builder or runtime can work here; the message says what failed."""


@dataclass
class Podman:
    exe: str
    global_args: list[str] = field(default_factory=list)
    run_args: list[str] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = 600, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([self.exe, *self.global_args, *args], capture_output=True, timeout=timeout, input=input)


def output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr).decode(errors="replace").strip()


def find() -> Podman:
    exe = shutil.which("podman")
    if not exe:
        raise Unavailable("no OCI builder: podman is not on PATH (Debian: apt-get install podman runc)")
    return Podman(exe)


def ensure_base(podman: Podman) -> str:
    """How the base image is available: 'present', 'pulled' or 'stand-in made'."""
    if podman("image", "exists", BASE).returncode == 0:
        return "present"
    pulled = podman("pull", "-q", BASE, timeout=300)
    if pulled.returncode == 0:
        return "pulled"
    debootstrap = shutil.which("debootstrap")
    if not debootstrap or os.geteuid() != 0:
        raise Unavailable(f"cannot pull {BASE} ({output(pulled).splitlines()[-1:]}) and cannot make a stand-in "
                          "(needs root and debootstrap)")
    with tempfile.TemporaryDirectory(prefix="mlflow-gcp-base-") as tmp:
        root = Path(tmp) / "rootfs"
        made = subprocess.run(
            [debootstrap, "--variant=minbase", "--include=python3,python3-pip,python-is-python3,ca-certificates",
             "bookworm", str(root), DEBIAN_MIRROR], capture_output=True, timeout=3600)
        if made.returncode != 0:
            raise Unavailable(f"debootstrap failed: {output(made)[-500:]}")
        # python:3.11-slim has no PEP 668 marker (pip installs system-wide there) and no apt lists.
        (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        for cache in ("var/lib/apt/lists", "var/cache/apt/archives"):
            shutil.rmtree(root / cache, ignore_errors=True)
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        imported = podman(
            "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
            "--change", f'LABEL org.opencontainers.image.description="{STAND_IN}"', str(archive), BASE,
            timeout=600)
        if imported.returncode != 0:
            raise Unavailable(f"podman import of the stand-in base failed: {output(imported)}")
    return "stand-in made"


def pick_runtime(podman: Podman) -> list[str]:
    """Configure `podman` with the first way of running a container that works here; the errors of
    each attempt when none does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = 4096 if nproc == resource.RLIM_INFINITY else min(4096, nproc)
    attempts = [([], [])]
    if shutil.which("runc"):
        attempts.append((["--runtime", "runc", "--cgroup-manager", "cgroupfs"],
                         ["--ulimit", f"nofile={soft}:{hard}", "--ulimit", f"nproc={nproc}:{nproc}"]))
    errors = []
    for global_args, run_args in attempts:
        probe = subprocess.run([podman.exe, *global_args, "run", "--rm", "--network=host", *run_args, BASE, "true"],
                               capture_output=True, timeout=120)
        if probe.returncode == 0:
            podman.global_args, podman.run_args = global_args, run_args
            return global_args + run_args
        errors.append(f"podman {' '.join(global_args + ['run'] + run_args)}: {output(probe).splitlines()[-1:]}")
    raise Unavailable("no container can run here: " + "; ".join(errors))


def build(podman: Podman, context: Path, tag: str, build_args: dict[str, str], *, timeout: float = 1800):
    args = ["build", "--pull=never", "--network=host", *podman.run_args, "-t", tag]
    if (HOST_CA_DIR / "ca-certificates.crt").is_file():
        args += ["-v", f"{HOST_CA_DIR}:{HOST_CA_DIR}:ro"]
    for name, value in build_args.items():
        args += ["--build-arg", f"{name}={value}"]
    return podman(*args, str(context), timeout=timeout)


def unpack_context(data: bytes, into: Path) -> Path:
    """The uploaded build context, as Cloud Build unpacks it."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    return into


def image_size(podman: Podman, tag: str) -> int:
    return int(output(podman("image", "inspect", "--format", "{{.Size}}", tag)))


def remove_other_tags(podman: Podman, keep: str) -> list[str]:
    """Remove the other tags of `keep`'s repository (images of older sources); the removed ones."""
    repo = keep.rsplit(":", 1)[0]
    listed = output(podman("images", "--format", "{{.Repository}}:{{.Tag}}", repo)).split()
    others = sorted({name for name in listed if name.startswith(repo + ":") and name != keep})
    if others:
        podman("rmi", *others)
    return others
