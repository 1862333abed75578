"""docs/reliability.md names, for each guarantee, the test that proves it: every cited test must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
# `tests/x/test_y.py::test_name[param]`, `tests/x/test_y.py` (the whole file), the short `test_y.py::test_name`
# (the one file of that name under tests/ that has the test), or `::test_name` and a bare `test_name` (same file as
# the citation before it on that line).
CITATION = re.compile(r"`(?P<path>(?:tests/[\w/]+|test_\w+)\.py)?(?:::(?P<name>\w+)(?:\[(?P<param>[^\]]+)\])?)?`"
                      r"|`(?P<bare>test_\w+)`")


def citations(text: str) -> list[tuple[str, str | None, str | None]]:
    """(file as cited, test or None, parameter id or None) for every test cited in the document."""
    found: list[tuple[str, str | None, str | None]] = []
    for line in text.splitlines():
        current = ""
        for match in CITATION.finditer(line):
            path, param = match.group("path"), match.group("param")
            name = match.group("name") or match.group("bare")
            if not path and not name:
                continue
            current = path or current
            assert current, f"'{name}' cited with no file before it: {line}"
            found.append((current, name, param))
    return found


def resolve(path: str, name: str | None) -> tuple[Path | None, str]:
    """The file a citation means, or None and why not: a short name must be one file under tests/ (the one with
    the cited test, when several files share the name)."""
    if "/" in path:
        return (ROOT / path, "") if (ROOT / path).is_file() else (None, "no such file")
    candidates = sorted((ROOT / "tests").rglob(path))
    if name is not None and len(candidates) > 1:
        candidates = [c for c in candidates if name in cited_file_tests(c)] or candidates
    if len(candidates) == 1:
        return candidates[0], ""
    return None, "no such file" if not candidates else f"ambiguous ({len(candidates)} files of that name)"


def cited_file_tests(path: Path) -> dict[str, ast.AST]:
    tree = ast.parse(path.read_text())
    return {node.name: node for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")}


def missing(doc_text: str) -> list[str]:
    problems = []
    for path, name, param in citations(doc_text):
        file, why = resolve(path, name)
        if file is None:
            problems.append(f"{path}: {why}")
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


def test_short_citations_are_checked_too() -> None:
    found = citations(DOC.read_text())
    assert sum(1 for path, _, _ in found if "/" not in path) >= 10  # the document's short `test_y.py::...` ones
    doc = ("| a | `test_consumer.py::test_sigkill_mid_job_completes_once_on_another_consumer` |\n"
           "| b | `test_consumer.py::test_that_is_not_there` |\n| c | `test_no_such_file.py::test_x` |\n"
           "| d | `tests/functions/test_accounts.py` (`test_a_link_works_once`, `test_not_there_either`) |\n"
           "| e | `test_accounts.py` |")
    assert missing(doc) == ["test_consumer.py::test_that_is_not_there: no such test",
                            "test_no_such_file.py: no such file",
                            "tests/functions/test_accounts.py::test_not_there_either: no such test",
                            "test_accounts.py: ambiguous (2 files of that name)"]


def test_a_citation_of_a_missing_test_is_caught() -> None:
    doc = ("| x | `tests/unit/test_reliability_doc.py::test_every_test_cited_in_reliability_md_exists`,"
           " `::test_that_is_not_there` |\n| y | `tests/unit/no_such_file.py` |\n"
           "| z | `tests/fault/test_faults.py::test_redis_fault_every_request_answered_within_1s_one_user_each"
           "[no_such_fault]` |")
    assert missing(doc) == ["tests/unit/test_reliability_doc.py::test_that_is_not_there: no such test",
                            "tests/unit/no_such_file.py: no such file",
                            "tests/fault/test_faults.py::test_redis_fault_every_request_answered_within_1s_one_user_each"
                            "[no_such_fault]: no such parameter"]
