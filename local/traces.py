"""`invoke traces REQUEST_ID`: the span tree of one creation request, from the dev span file (TRACE_FILE)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_spans(path: Path, trace_id: str) -> list[dict[str, Any]]:
    """Every span of `trace_id` in the JSON-lines span file."""
    if not path.exists():
        return []
    spans = []
    for line in path.read_text().splitlines():
        try:
            span = json.loads(line)
        except ValueError:
            continue  # a line being written by another process
        if span.get("trace_id") == trace_id:
            spans.append(span)
    return spans


def span_tree(spans: Iterable[dict[str, Any]]) -> list[str]:
    """One line per span, indented under its parent, children in start order; with duration and service."""
    spans = sorted(spans, key=lambda s: s["start_ns"])
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            ms = (span["end_ns"] - span["start_ns"]) / 1e6
            remote = " (parent in another process)" if depth == 0 and span["parent_span_id"] else ""
            status = "" if span["status"] in ("UNSET", "OK") else f" {span['status']}"
            attrs = " ".join(f"{k}={v}" for k, v in sorted(span["attributes"].items()))
            lines.append(f"{'  ' * depth}{span['name']}  {ms:.2f} ms  [{span['service']}]{status}"
                         f"{'  ' + attrs if attrs else ''}{remote}")
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return lines
