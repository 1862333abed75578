"""requirements.lock is the runtime set of pyproject.toml, hash-pinned, and it is what the deploy installs."""

from __future__ import annotations

import json
import re
import tomllib

from packaging.requirements import Requirement

from infra.lock import LOCK_PATH, PYPROJECT_PATH, canonical, drift, locked_pins, runtime_requirements
from infra.manifest import REPO_ROOT, load_manifest
from infra.render import DeployConfig, render_terraform


def test_every_runtime_dependency_is_pinned_in_the_lock_within_its_range() -> None:
    pins = locked_pins(LOCK_PATH.read_text())
    assert pins
    for line in runtime_requirements():
        requirement = Requirement(line)
        name = canonical(requirement.name)
        assert name in pins, f"{requirement.name} is a runtime dependency but not in requirements.lock: invoke lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{requirement.name}: lock pins {pins[name]}, pyproject wants {requirement.specifier}: invoke lock")
    # pyjwt[crypto]: RS256 (the scheduler's OIDC tokens) needs cryptography in production, not only in the tests.
    assert "cryptography" in pins


def test_the_lock_holds_no_development_only_package() -> None:
    pins = locked_pins(LOCK_PATH.read_text())
    dev = tomllib.loads(PYPROJECT_PATH.read_text())["project"]["optional-dependencies"]["dev"]
    assert not {canonical(Requirement(line).name) for line in dev} & set(pins)


def test_every_locked_package_is_hash_checked() -> None:
    text = LOCK_PATH.read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2] if text.startswith("#") else text)
    pinned = [block for block in blocks if re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*==", block)]
    assert len(pinned) == len(locked_pins(text))
    for block in pinned:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), block.splitlines()[0]


def test_the_deploy_installs_the_lock() -> None:
    lines = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line and not line.startswith("#")] == ["-r requirements.lock"]
    # The functions' source zip and the image are this repository: both files are in it.
    archive = json.loads(render_terraform(load_manifest(), DeployConfig(project="p"))["functions.tf.json"])
    excludes = archive["data"]["archive_file"]["source"]["excludes"]
    assert not {"requirements.txt", "requirements.lock"} & set(excludes)


def test_drift_names_every_installed_package_that_differs_from_its_pin() -> None:
    from importlib.metadata import version

    pytest_version = version("pytest")
    lock = (f"pytest=={pytest_version} \\\n    --hash=sha256:{'0' * 64}\n"
            f"no-such-package-xyz==1.0 \\\n    --hash=sha256:{'1' * 64}\n")
    assert drift(lock) == {"no-such-package-xyz": ("1.0", None)}
    assert drift(lock.replace(f"pytest=={pytest_version}", "pytest==0.0.1")) == {
        "pytest": ("0.0.1", pytest_version), "no-such-package-xyz": ("1.0", None)}
