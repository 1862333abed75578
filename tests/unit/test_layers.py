"""The domain package's import direction (shared/__init__.py): core at the bottom, operations at the top.

A module of a package may import `shared.<package>` modules only from the packages listed for it; `bootstrap`
(the composition root) is open to the capabilities for its `Deps` type, never to `core`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
ALLOWED = {
    "core": {"core"},
    "creation": {"core", "creation", "bootstrap"},
    "accounts": {"core", "creation", "accounts", "bootstrap"},
    "bulk": {"core", "creation", "bulk", "bootstrap"},
    "operations": {"core", "creation", "accounts", "bulk", "operations", "bootstrap"},
}


def _shared_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "shared":
            parts = node.module.split(".")
            if len(parts) > 1:
                found.append((node.lineno, parts[1]))
            else:  # `from shared import x`
                found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name.split(".")[1]) for a in node.names
                         if a.name.startswith("shared."))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_below_it(package):
    wrong = [f"{path.relative_to(SHARED)}:{line} imports shared.{target}"
             for path in sorted((SHARED / package).glob("*.py"))
             for line, target in _shared_imports(path) if target not in ALLOWED[package]]
    assert wrong == []


def test_every_package_says_what_it_owns_and_what_it_may_import():
    for package in ALLOWED:
        doc = ast.get_docstring(ast.parse((SHARED / package / "__init__.py").read_text())) or ""
        assert len(doc) > 100 and "import" in doc, package


def test_the_domain_package_stays_a_few_packages_and_few_loose_modules():
    loose = [p.name for p in SHARED.glob("*.py") if p.name != "__init__.py"]
    packages = [p.name for p in SHARED.iterdir() if (p / "__init__.py").exists()]
    assert sorted(packages) == sorted(ALLOWED)
    assert len(loose) <= 12, loose
