"""A measured figure in the README or a docs page comes from the newest published bench run, or is not there.

Prose quoting a throughput, a CPU cost or a profile share that no results file holds cannot be checked and goes
stale silently (issue 20 found three such paragraphs). The generated table of docs/performance.md is exempt: it is
compared with its file by tests/unit/test_bench_published.py. Goals and limits ("p99 <= 40 ms", "at most 10
starts/s") are not figures: a comparison or a limit word before the number says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.publish import BEGIN, END, newest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
         ROOT / "infra" / "README.md"]
NUMBER = r"(\d[\d,]*(?:\.\d+)?)"
MEASURED = [
    re.compile(NUMBER + r"\s?(?:req|requests|users|starts|answers|rows|jobs|emails|spans)/s\b"),  # throughput
    re.compile(NUMBER + r"\s?(?:ms|s|seconds?)\s+of\s+CPU\b"),  # a CPU cost
    re.compile(NUMBER + r"\s?%"),  # a profile share
]
NOT_A_FIGURE = re.compile(r"(<=|>=|<|>|≤|≥|goal|limit|at most|at least|under|over|quick|full|default|every)\W*\S*\W*$",
                          re.IGNORECASE)


def _published_numbers() -> set[float]:
    numbers: set[float] = set()

    def walk(value: object) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int | float):
            numbers.add(float(value))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            numbers.update(float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", value))

    walk(json.loads(newest().read_text()))
    return numbers


def _matches(figure: str, published: set[float]) -> bool:
    value = float(figure.replace(",", ""))
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    return any(round(p, decimals) == value for p in published)


def measured_figures(text: str) -> list[str]:
    """Every measured figure of a page outside its generated block, as written."""
    text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), "", text, flags=re.S)
    found = []
    for pattern in MEASURED:
        for match in pattern.finditer(text):
            before = text[max(0, match.start() - 24):match.start()]
            if not NOT_A_FIGURE.search(before):
                found.append(match.group(1))
    return found


def test_every_measured_figure_in_the_docs_is_in_the_newest_published_run():
    published = _published_numbers()
    unpublished = [f"{page.relative_to(ROOT)}: {figure}" for page in PAGES
                   for figure in measured_figures(page.read_text()) if not _matches(figure, published)]
    assert unpublished == []


def test_the_check_finds_a_figure_typed_into_prose():
    assert measured_figures("One create process answers about 1,300 answers/s (0.79 s of CPU per 1,000).") == [
        "1,300", "0.79"]
    assert measured_figures("redis-py 21%, psycopg 18%") == ["21", "18"]
    assert measured_figures("goal: p99 <= 40 ms at most 10 starts/s; 0.3 s of CPU per 1,000 is the goal") == [
        "0.3"]
