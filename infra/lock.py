"""requirements.lock: the runtime dependency set, every version pinned and every file hash-checked.

The deploy installs exactly this set: Google's Python buildpack installs `requirements.txt`, which is
`-r requirements.lock` (pip turns on hash checking as soon as one line has a hash). `invoke lock` regenerates it
with `uv pip compile` from pyproject.toml's runtime `dependencies` (not the `[dev]` extras), for the deploy's
Python (3.11) on Linux x86_64. A test fails when pyproject and the lock disagree.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from infra.manifest import REPO_ROOT

LOCK_PATH = REPO_ROOT / "requirements.lock"
PYPROJECT_PATH = REPO_ROOT / "pyproject.toml"
PYTHON_VERSION = "3.11"  # the functions' runtime (infra/render/config.py PYTHON_RUNTIME = python311)
PLATFORM = "x86_64-manylinux_2_28"  # Cloud Run's machines

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def joint_resolution_command(out: Path, *, upgrade: bool = False) -> list[str]:
    """Step 1 of `invoke lock`: one resolution of the runtime set together with the `[dev]` tools.

    The tests run the dev tools beside the runtime set (`.ci/run` installs the lock, then `.[dev]`, then checks
    that no pin moved). A dev tool may cap a runtime package (moto's aws-sam-translator pins pydantic ~=2.13), so
    the runtime pins are taken from a resolution that includes the dev tools: what is tested is what is deployed.
    """
    return [sys.executable, "-m", "uv", "pip", "compile", str(PYPROJECT_PATH.relative_to(REPO_ROOT)),
            "--extra", "dev", "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM, "--quiet",
            "-o", str(out), *(["--upgrade"] if upgrade else [])]


def compile_command(*, constraints: Path | None = None, upgrade: bool = False) -> list[str]:
    """Step 2: the `uv pip compile` call that writes the lock (kept pins unless `upgrade`), constrained to the
    joint resolution of step 1 when given."""
    return [sys.executable, "-m", "uv", "pip", "compile", str(PYPROJECT_PATH.relative_to(REPO_ROOT)),
            "--generate-hashes", "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
            "--custom-compile-command", "invoke lock", "--quiet",
            *(["-c", str(constraints)] if constraints else []),
            "-o", str(LOCK_PATH.relative_to(REPO_ROOT)), *(["--upgrade"] if upgrade else [])]


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(text: str) -> dict[str, str]:
    """name -> pinned version of every requirement of a lock file."""
    return {canonical(name): version for name, version in _PIN.findall(text)}


def drift(lock_text: str) -> dict[str, tuple[str, str | None]]:
    """Locked packages whose installed version differs: name -> (locked, installed or None)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, tuple[str, str | None]] = {}
    for name, locked in locked_pins(lock_text).items():
        try:
            installed: str | None = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != locked:
            found[name] = (locked, installed)
    return found


def runtime_requirements(pyproject: Path = PYPROJECT_PATH) -> list[str]:
    """The runtime `dependencies` of pyproject.toml, as written."""
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
