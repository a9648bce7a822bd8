"""What a Cloud Build `docker build` step finds in the uploaded source: the fake unpacks the
storageSource tarball (the bytes the tool really uploaded) and checks the step against the
Dockerfile in it, as a strict builder would.

Docker itself only warns about a `--build-arg` that no `ARG` declares ("One or more build-args
[X] were not consumed") and builds anyway, so a value the image was supposed to get is silently
dropped: `upgrade --mlflow-version` once built an image tagged with the new version that still ran
the old one. The fake fails such a step instead (a warning nobody reads on Cloud Build is as good
as success). Docker's predefined proxy args need no ARG and are accepted.
"""

from __future__ import annotations

import io
import posixpath
import re
import shlex
import tarfile

# Docker's predefined ARGs (docs.docker.com, "Predefined ARGs"): usable without an ARG line.
PREDEFINED_ARGS = frozenset(
    name for base in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
    for name in (base, base.lower())
)


class StepFailed(Exception):
    """The build step fails as on Cloud Build; `fetch` marks a failure to unpack the source."""

    def __init__(self, message: str, *, fetch: bool = False):
        super().__init__(message)
        self.message = message
        self.fetch = fetch


def unpack(data: bytes) -> dict[str, bytes]:
    """The source archive's regular files by path (Cloud Build accepts a gzipped tar)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            return {posixpath.normpath(m.name): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as err:
        raise StepFailed(f"failed to unpack the source archive: {err}", fetch=True) from None


def declared_args(dockerfile: str) -> set[str]:
    """Names of every ARG instruction (before or after FROM; `ARG A=1 B` declares two)."""
    names = set()
    for line in re.sub(r"\\\r?\n", " ", dockerfile).splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword.upper() == "ARG":
            try:
                items = shlex.split(rest, comments=True)  # a quoted default may hold spaces
            except ValueError:
                items = rest.split()
            names.update(item.split("=", 1)[0] for item in items)
    return names


def _build_args(args: list[str]) -> tuple[list[str], str, str]:
    """(build-arg names, Dockerfile path, context dir) of `docker build ...` arguments."""
    names, dockerfile, rest, i = [], None, [], 1
    while i < len(args):
        arg = args[i]
        if arg in ("--build-arg", "-f", "--file", "-t", "--tag", "--target", "--platform", "--network"):
            value = args[i + 1] if i + 1 < len(args) else ""
            if arg == "--build-arg":
                names.append(value.split("=", 1)[0])
            elif arg in ("-f", "--file"):
                dockerfile = value
            i += 2
            continue
        if arg.startswith("--build-arg="):
            names.append(arg.split("=", 2)[1])
        elif arg.startswith("--file="):
            dockerfile = arg.split("=", 1)[1]
        elif not arg.startswith("-"):
            rest.append(arg)
        i += 1
    context = rest[-1] if rest else "."
    return names, dockerfile or posixpath.join(context, "Dockerfile"), context


def check_steps(steps: list[dict], files: dict[str, bytes]) -> None:
    """Raise StepFailed for the first docker build step that would fail or drop a build-arg."""
    for i, step in enumerate(steps):
        args = step.get("args") or []
        if not step.get("name", "").endswith("cloud-builders/docker") or not args or args[0] != "build":
            continue
        names, path, _context = _build_args(args)
        text = files.get(posixpath.normpath(path))
        if text is None:
            raise StepFailed(f'build step {i} "{step["name"]}" failed: step exited with non-zero status: 1: '
                             f"failed to read dockerfile: open {path}: no such file or directory")
        unused = sorted(n for n in names if n not in declared_args(text.decode("utf-8", "replace"))
                        and n not in PREDEFINED_ARGS)
        if unused:
            raise StepFailed(f'build step {i} "{step["name"]}" failed: One or more build-args '
                             f"[{' '.join(unused)}] were not consumed: {path} declares no ARG of that name, "
                             "so the image would not get the value (docker only warns; this strict builder refuses)")
