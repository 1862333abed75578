"""docs/reliability.md names, for each guarantee, the test that proves it: every cited test must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
# `tests/x/test_y.py::test_name[param]`, `tests/x/test_y.py` (the whole file), or `::test_name` (same file as the
# citation before it on that line).
CITATION = re.compile(r"`((?:tests/[\w/]+\.py)?)(?:::(\w+)(?:\[([^\]]+)\])?)?`")


def citations(text: str) -> list[tuple[str, str | None, str | None]]:
    """(file, test or None, parameter id or None) for every test cited in the document."""
    found: list[tuple[str, str | None, str | None]] = []
    for line in text.splitlines():
        current = ""
        for match in CITATION.finditer(line):
            path, name, param = match.group(1), match.group(2), match.group(3)
            if not path and not name:
                continue
            current = path or current
            assert current, f"'::{name}' cited with no file before it: {line}"
            found.append((current, name, param))
    return found


def cited_file_tests(path: Path) -> dict[str, ast.AST]:
    tree = ast.parse(path.read_text())
    return {node.name: node for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")}


def missing(doc_text: str) -> list[str]:
    problems = []
    for path, name, param in citations(doc_text):
        file = ROOT / path
        if not file.is_file():
            problems.append(f"{path}: no such file")
            continue
        if name is None:
            if not cited_file_tests(file):
                problems.append(f"{path}: no test in it")
            continue
        node = cited_file_tests(file).get(name)
        if node is None:
            problems.append(f"{path}::{name}: no such test")
        elif param is not None and not any(
                isinstance(c, ast.Constant) and c.value == param for d in node.decorator_list  # type: ignore[attr-defined]
                for c in ast.walk(d)):
            problems.append(f"{path}::{name}[{param}]: no such parameter")
    return problems


def test_every_test_cited_in_reliability_md_exists() -> None:
    found = citations(DOC.read_text())
    assert len(found) >= 20  # the document cites its proofs; a parser that finds none must not pass
    assert missing(DOC.read_text()) == []


def test_a_citation_of_a_missing_test_is_caught() -> None:
    doc = ("| x | `tests/unit/test_reliability_doc.py::test_every_test_cited_in_reliability_md_exists`,"
           " `::test_that_is_not_there` |\n| y | `tests/unit/no_such_file.py` |\n"
           "| z | `tests/fault/test_faults.py::test_redis_fault_every_request_answered_within_1s_one_user_each"
           "[no_such_fault]` |")
    assert missing(doc) == ["tests/unit/test_reliability_doc.py::test_that_is_not_there: no such test",
                            "tests/unit/no_such_file.py: no such file",
                            "tests/fault/test_faults.py::test_redis_fault_every_request_answered_within_1s_one_user_each"
                            "[no_such_fault]: no such parameter"]
