"""The pure parts of the benchmark suite: statistics, goals, wrk output parsing, the JSON shape and the table.

Nothing here starts a process or opens a socket, so `tests/unit/test_bench_report.py` covers it all.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

CASE_KEYS = ("figure", "unit", "limit", "limit_desc", "ratio", "goal", "goal_met")
MACHINE_KEYS = ("cpu_model", "cores", "memory_gib", "python", "postgres", "redis", "load_average_start", "date")
WRK_MARKER = "BENCH_JSON "


# --------------------------------------------------------------------------- statistics


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample: always a value that was measured.

    With fewer than 100 samples p99 is the maximum, which is what a small sample can honestly say.
    """
    data = sorted(values)
    if not data:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    rank = max(1, math.ceil(q / 100 * len(data)))
    return float(data[rank - 1])


def hist_percentile(hist: Iterable[tuple[float, int]], q: float) -> float:
    """Nearest-rank percentile of a histogram of (value, count) pairs (several runs' may be concatenated)."""
    data = sorted((float(v), int(c)) for v, c in hist if int(c) > 0)
    total = sum(c for _, c in data)
    if not total:
        raise ValueError("percentile of an empty histogram")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for value, count in data:
        seen += count
        if seen >= rank:
            return value
    return data[-1][0]


def ratio(figure: float | None, limit: float | None, *, inverse: bool = False) -> float | None:
    """figure / limit (or limit / figure with `inverse`); None when either is missing or the divisor is 0."""
    if figure is None or limit is None:
        return None
    numerator, divisor = (limit, figure) if inverse else (figure, limit)
    if divisor == 0:
        return None
    return float(numerator) / float(divisor)


def max_in_window(times_ms: Iterable[float], window_ms: float) -> int:
    """The largest number of events inside any half-open window [t, t + window_ms).

    This is the rate limiter's own rule: a start at exactly t + window no longer sees the one at t.
    """
    data = sorted(times_ms)
    best = 0
    lo = 0
    for hi, t in enumerate(data):
        while data[lo] <= t - window_ms:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def steady_rate(times_ms: Sequence[float], window_ms: float) -> float:
    """Events per second over the longest run of whole windows starting at the first event.

    A sliding-window limiter lets starts come in bursts at each window edge, so (n - 1) / span overstates
    the rate (10 bursts of 10 over 9 s read as 11/s). Counting whole windows does not: the events in
    [t0, t0 + k * window) divided by k windows.
    """
    data = sorted(times_ms)
    if len(data) < 2:
        raise ValueError("a rate needs at least two events")
    k = int((data[-1] - data[0]) // window_ms)
    if k < 1:
        return (len(data) - 1) / ((data[-1] - data[0]) / 1000) if data[-1] > data[0] else math.inf
    end = data[0] + k * window_ms
    count = sum(1 for t in data if t < end)
    return count / (k * window_ms / 1000)


# --------------------------------------------------------------------------- goals


def at_most(value: float | None, bound: float | None) -> bool | None:
    """value <= bound; None (unknown) when either is missing."""
    if value is None or bound is None:
        return None
    return value <= bound


def at_least(value: float | None, bound: float | None) -> bool | None:
    """value >= bound; None (unknown) when either is missing."""
    if value is None or bound is None:
        return None
    return value >= bound


def within(value: float | None, low: float, high: float) -> bool | None:
    """low <= value <= high; None when the value is missing."""
    if value is None:
        return None
    return low <= value <= high


def all_met(*parts: bool | None) -> bool | None:
    """Every part met (False as soon as one is missed; None when none is known and none is missed)."""
    if any(p is False for p in parts):
        return False
    if any(p is None for p in parts):
        return None
    return True


def case_result(*, figure: float, unit: str, limit: float | None, limit_desc: str, ratio: float | None,
                goal: str, goal_met: bool | None, **extra: Any) -> dict[str, Any]:
    """One case in the results document: the seven fixed keys first, then the extra fields."""
    result: dict[str, Any] = {"figure": _num(figure), "unit": unit, "limit": _num(limit), "limit_desc": limit_desc,
                              "ratio": _num(ratio), "goal": goal, "goal_met": goal_met}
    result.update({k: _clean(v) for k, v in extra.items()})
    return result


def failed_case(error: str) -> dict[str, Any]:
    """A case that could not produce a figure (the run then exits non-zero)."""
    return {"figure": None, "unit": "", "limit": None, "limit_desc": "", "ratio": None,
            "goal": "the case must run", "goal_met": False, "error": error}


def _num(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return round(value, 6)


def _clean(value: Any) -> Any:
    """Extra fields as plain JSON: floats rounded, NaN/inf as null, tuples as lists."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return str(value)


# --------------------------------------------------------------------------- the document


def validate(doc: Any) -> list[str]:
    """Everything wrong with a results document's shape (empty list: it is well formed)."""
    problems: list[str] = []
    if not isinstance(doc, dict) or set(doc) != {"machine", "cases"}:
        return ["the document must be an object with exactly 'machine' and 'cases'"]
    machine = doc["machine"]
    if not isinstance(machine, dict):
        problems.append("machine must be an object")
    else:
        problems += [f"machine.{key} is missing" for key in MACHINE_KEYS if key not in machine]
    cases = doc["cases"]
    if not isinstance(cases, dict) or not cases:
        return [*problems, "cases must be a non-empty object"]
    for name, case in cases.items():
        if not isinstance(case, dict):
            problems.append(f"cases.{name} must be an object")
            continue
        missing = [key for key in CASE_KEYS if key not in case]
        if missing:
            problems.append(f"cases.{name} lacks {', '.join(missing)}")
            continue
        if "error" in case:
            continue
        if not _is_number(case["figure"]):
            problems.append(f"cases.{name}.figure must be a number")
        for key in ("limit", "ratio"):
            if case[key] is not None and not _is_number(case[key]):
                problems.append(f"cases.{name}.{key} must be a number or null")
        if not isinstance(case["unit"], str) or not isinstance(case["goal"], str):
            problems.append(f"cases.{name}.unit and goal must be strings")
        if not isinstance(case["limit_desc"], str):
            problems.append(f"cases.{name}.limit_desc must be a string")
        if case["goal_met"] not in (True, False, None):
            problems.append(f"cases.{name}.goal_met must be true, false or null")
        if case["limit"] is None and case["ratio"] is not None:
            problems.append(f"cases.{name}: a ratio without a limit")
    try:
        json.dumps(doc, allow_nan=False)
    except ValueError as exc:
        problems.append(f"not strict JSON: {exc}")
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- wrk output

_DURATION_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$")
_REQUESTS_LINE = re.compile(r"^\s*(\d+) requests in (\d+(?:\.\d+)?)(us|ms|s|m|h)")
_RPS_LINE = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)")
_NON2XX_LINE = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def to_ms(value: float, unit: str) -> float:
    """A wrk duration (us, ms, s, m, h) in milliseconds."""
    return value * _DURATION_UNITS[unit]


def parse_wrk_output(text: str) -> dict[str, Any]:
    """Figures of one wrk run.

    Our Lua script's `done()` prints one `BENCH_JSON {...}` line (microsecond percentiles, status codes);
    when it is there it wins. Otherwise wrk's own text report (`--latency`) is read. Returns requests,
    duration_s, rps, p50_ms, p99_ms, max_ms (None when unknown), codes (status -> count) and errors.
    """
    for line in text.splitlines():
        if line.startswith(WRK_MARKER):
            raw = json.loads(line[len(WRK_MARKER):])
            requests = int(raw["requests"])
            duration_s = float(raw["duration_us"]) / 1e6
            codes = {int(k): int(v) for k, v in (raw.get("codes") or {}).items()}
            return {
                "requests": requests,
                "duration_s": duration_s,
                "rps": requests / duration_s if duration_s > 0 else 0.0,
                "p50_ms": float(raw["p50_us"]) / 1000,
                "p99_ms": float(raw["p99_us"]) / 1000,
                "max_ms": float(raw["max_us"]) / 1000,
                "codes": codes,
                "errors": {k: int(v) for k, v in (raw.get("errors") or {}).items()},
                "hist": [(float(v) / 1000, int(c)) for v, c in raw.get("hist") or []],
            }
    result: dict[str, Any] = {"requests": None, "duration_s": None, "rps": None, "p50_ms": None, "p99_ms": None,
                              "max_ms": None, "codes": {}, "errors": {}, "hist": []}
    in_distribution = False
    for line in text.splitlines():
        if "Latency Distribution" in line:
            in_distribution = True
            continue
        match = _LATENCY_LINE.match(line)
        if in_distribution and match:
            pct, value, unit = float(match.group(1)), float(match.group(2)), match.group(3)
            if pct == 50:
                result["p50_ms"] = to_ms(value, unit)
            elif pct == 99:
                result["p99_ms"] = to_ms(value, unit)
            continue
        in_distribution = False
        if match := _REQUESTS_LINE.match(line):
            result["requests"] = int(match.group(1))
            result["duration_s"] = to_ms(float(match.group(2)), match.group(3)) / 1000
        elif match := _RPS_LINE.match(line):
            result["rps"] = float(match.group(1))
        elif match := _NON2XX_LINE.match(line):
            result["errors"]["status"] = int(match.group(1))
        elif match := _SOCKET_ERRORS.search(line):
            for key, count in zip(("connect", "read", "write", "timeout"), match.groups(), strict=True):
                result["errors"][key] = int(count)
    if result["requests"] is None:
        raise ValueError("not a wrk report: no 'N requests in T' line")
    return result


# --------------------------------------------------------------------------- presentation


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for the table: about `digits` significant figures, '-' for None."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:.{decimals}f}"


def met_mark(goal_met: bool | None) -> str:
    """yes / NO / n/a."""
    return {True: "yes", False: "NO", None: "n/a"}[goal_met]


def format_table(cases: Mapping[str, Mapping[str, Any]], notes: Mapping[str, str] | None = None) -> str:
    """The one table printed at the end of a run: a row per case, its notes indented on the line below."""
    header = ("case", "figure", "limit", "ratio", "met", "goal")
    rows: list[tuple[tuple[str, ...], str]] = []
    for name, case in cases.items():
        if "error" in case:
            rows.append(((name, "ERROR", "-", "-", "NO", str(case.get("goal", ""))), str(case["error"])[:200]))
            continue
        shown = f"{fmt(case['figure'])} {case['unit']}".strip()
        limit = "-" if case["limit"] is None else f"{fmt(case['limit'])} {case['unit']}".strip()
        rows.append(((name, shown, limit, fmt(case["ratio"]), met_mark(case["goal_met"]), str(case["goal"])),
                     (notes or {}).get(name, "")))
    widths = [max(len(h), *(len(r[i]) for r, _ in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)]
        return "  ".join([*padded, cells[-1]])

    out = [line(header), line(tuple("-" * w for w in widths))]
    for cells, note in rows:
        out.append(line(cells))
        if note:
            out.append(f"    {note}")
    return "\n".join(out)
