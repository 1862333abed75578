"""The pure parts of the benchmark suite (bench/report.py, bench/loadgen.py's guard): no servers, no timing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.loadgen import LUA_SCRIPT, Load
from bench.report import (
    CASE_KEYS,
    all_met,
    at_least,
    at_most,
    case_result,
    failed_case,
    fmt,
    format_table,
    hist_percentile,
    max_in_window,
    parse_wrk_output,
    percentile,
    ratio,
    steady_rate,
    to_ms,
    validate,
    within,
)

WRK_TEXT = """Running 5s test @ http://127.0.0.1:40001/api/users
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    78.20ms   20.11ms 210.33ms   70.00%
    Req/Sec   640.12     50.00   700.00     80.00%
  Latency Distribution
     50%   75.10ms
     75%   85.00ms
     90%  100.00ms
     99%  150.50ms
  3200 requests in 5.01s, 1.20MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:    638.72
Transfer/sec:    245.00KB
"""

WRK_JSON = ('BENCH_JSON {"requests": 2000, "duration_us": 4000000, "p50_us": 1650, "p99_us": 5384, "max_us": 9000,'
            ' "mean_us": 1800.5, "codes": {"202": 1998, "503": 2}, "errors": {"connect": 0, "read": 0, "write": 0,'
            ' "status": 2, "timeout": 0}, "hist": [[900, 1], [1650, 1000], [5384, 998], [9000, 1]]}')


# --------------------------------------------------------------------------- statistics


def test_percentile_is_nearest_rank_and_always_a_measured_value():
    data = list(range(1, 101))  # 1..100
    assert percentile(data, 50) == 50
    assert percentile(data, 99) == 99
    assert percentile(data, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0


def test_percentile_of_a_small_sample_p99_is_the_maximum():
    assert percentile([5, 1, 9, 3] * 5, 99) == 9


@pytest.mark.parametrize("bad", [[], None])
def test_percentile_refuses_an_empty_sample(bad):
    with pytest.raises((ValueError, TypeError)):
        percentile(bad, 50)


def test_percentile_refuses_out_of_range_q():
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_ratio_plain_inverse_and_missing():
    assert ratio(50, 200) == 0.25
    assert ratio(50, 200, inverse=True) == 4.0
    assert ratio(None, 3) is None
    assert ratio(3, None) is None
    assert ratio(3, 0) is None


def test_max_in_window_uses_half_open_windows_like_the_limiter():
    # 10 starts at t, and 10 more exactly one window later: never more than 10 in [t, t + 1000)
    times = [0.0] * 10 + [1000.0] * 10
    assert max_in_window(times, 1000) == 10
    # one start a millisecond early makes 11
    assert max_in_window([*([0.0] * 10), 999.0], 1000) == 11


def test_max_in_window_unsorted_and_empty():
    assert max_in_window([], 1000) == 0
    assert max_in_window([500, 0, 1400, 900, 2500], 1000) == 3


def test_steady_rate_is_not_fooled_by_bursts_at_window_edges():
    bursts = [1000.0 * second + i for second in range(10) for i in range(10)]  # 10 bursts of 10 over ~9 s
    naive = (len(bursts) - 1) / ((bursts[-1] - bursts[0]) / 1000)
    assert naive > 10.5
    assert steady_rate(bursts, 1000) == pytest.approx(10.0)


def test_steady_rate_of_evenly_spaced_events():
    even = [100.0 * i for i in range(100)]  # 10 per second for 10 s
    assert steady_rate(even, 1000) == pytest.approx(10.0)


def test_steady_rate_shorter_than_a_window_and_too_few_events():
    assert steady_rate([0.0, 100.0, 200.0], 1000) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        steady_rate([1.0], 1000)


# --------------------------------------------------------------------------- goals and the document


def test_goal_helpers():
    assert at_most(2.0, 2.0) is True
    assert at_most(2.1, 2.0) is False
    assert at_least(0.35, 0.35) is True
    assert at_least(None, 1) is None
    assert within(1.0, 0.95, 1.05) is True
    assert within(1.06, 0.95, 1.05) is False
    assert all_met(True, True) is True
    assert all_met(True, None) is None
    assert all_met(None, False) is False


def _doc(**cases):
    machine = {"cpu_model": "x", "cores": 2, "memory_gib": 24.0, "python": "3.11", "postgres": "18",
               "redis": "7", "load_average_start": [1.0, 1.0, 1.0], "date": "2026-01-01T00:00:00+00:00"}
    return {"machine": machine, "cases": cases}


def test_case_result_has_the_fixed_keys_first_then_extras_as_plain_json():
    result = case_result(figure=1.23456789, unit="ms", limit=2.0, limit_desc="d", ratio=0.6172839, goal="g",
                         goal_met=True, p50_ms=float("nan"), answers={202: 5}, samples=(1.0, 2.0))
    assert tuple(result)[:len(CASE_KEYS)] == CASE_KEYS
    assert result["figure"] == 1.234568
    assert result["p50_ms"] is None
    assert result["answers"] == {"202": 5}
    assert result["samples"] == [1.0, 2.0]
    assert validate(_doc(a=result)) == []
    json.dumps(result, allow_nan=False)


def test_case_result_refuses_an_extra_that_shadows_a_fixed_key():
    with pytest.raises(TypeError):
        case_result(figure=1, unit="ms", limit=None, limit_desc="", ratio=None, goal="g", goal_met=None,
                    **{"figure": 2})  # type: ignore[misc]


def test_validate_finds_shape_problems():
    good = case_result(figure=1, unit="ms", limit=None, limit_desc="none", ratio=None, goal="g", goal_met=None)
    assert validate(_doc(ok=good)) == []
    assert validate({"cases": {}}) != []
    assert validate(_doc()) == ["cases must be a non-empty object"]
    assert any("lacks" in p for p in validate(_doc(bad={"figure": 1.0})))
    assert any("ratio without a limit" in p for p in validate(_doc(bad={**good, "ratio": 2.0})))
    assert any("figure must be a number" in p for p in validate(_doc(bad={**good, "figure": "fast"})))
    assert any("goal_met" in p for p in validate(_doc(bad={**good, "goal_met": "yes"})))
    broken = _doc(ok=good)
    del broken["machine"]["redis"]
    assert validate(broken) == ["machine.redis is missing"]


def test_a_failed_case_keeps_the_shape_and_is_reported():
    doc = _doc(broken=failed_case("RuntimeError: boom"))
    assert validate(doc) == []
    assert doc["cases"]["broken"]["goal_met"] is False
    assert "ERROR" in format_table(doc["cases"])


# --------------------------------------------------------------------------- wrk


def test_parse_wrk_text_report():
    result = parse_wrk_output(WRK_TEXT)
    assert result["requests"] == 3200
    assert result["duration_s"] == pytest.approx(5.01)
    assert result["rps"] == pytest.approx(638.72)
    assert result["p50_ms"] == pytest.approx(75.10)
    assert result["p99_ms"] == pytest.approx(150.50)
    assert result["errors"] == {"read": 2, "connect": 0, "write": 0, "timeout": 1, "status": 7}


def test_parse_wrk_prefers_the_scripts_json_line():
    result = parse_wrk_output(WRK_TEXT + WRK_JSON + "\n")
    assert result["requests"] == 2000
    assert result["rps"] == pytest.approx(500.0)
    assert result["p50_ms"] == pytest.approx(1.65)
    assert result["p99_ms"] == pytest.approx(5.384)
    assert result["codes"] == {202: 1998, 503: 2}
    assert result["errors"]["status"] == 2
    assert result["hist"][0] == (0.9, 1) and sum(c for _, c in result["hist"]) == 2000
    assert parse_wrk_output(WRK_TEXT)["hist"] == []


def test_hist_percentile_pools_runs_by_nearest_rank():
    run_a = [(10.0, 99), (50.0, 1)]  # p99 10 ms alone
    run_b = [(11.0, 98), (40.0, 2)]  # p99 40 ms alone
    assert hist_percentile(run_a, 99) == 10.0
    assert hist_percentile(run_b, 99) == 40.0
    pooled = run_a + run_b  # 200 samples: rank 198 is the first of the 40s
    assert hist_percentile(pooled, 99) == 40.0
    assert hist_percentile(pooled, 50) == 11.0  # rank 100: one past the 99 tens
    assert hist_percentile([(5.0, 0), (7.0, 3)], 0) == 7.0
    with pytest.raises(ValueError):
        hist_percentile([(1.0, 0)], 50)


@pytest.mark.parametrize(("value", "unit", "ms"), [(250, "us", 0.25), (1.5, "ms", 1.5), (2, "s", 2000),
                                                   (1, "m", 60_000)])
def test_wrk_units(value, unit, ms):
    assert to_ms(value, unit) == pytest.approx(ms)


def test_parse_wrk_refuses_something_else():
    with pytest.raises(ValueError):
        parse_wrk_output("wrk: connection refused\n")


def test_lua_script_prints_the_marker_the_parser_reads():
    script = Path(LUA_SCRIPT).read_text()
    assert "BENCH_JSON " in script and "BENCH_THREAD_DONE" in script
    assert "Authorization" in script and "request()" in script


def test_load_is_only_ever_sent_to_this_machine():
    Load(url="http://127.0.0.1:1234/api/users")
    with pytest.raises(ValueError):
        Load(url="http://10.0.0.1:1234/api/users")


# --------------------------------------------------------------------------- presentation


def test_fmt_and_table():
    assert fmt(None) == "-"
    assert fmt(0) == "0"
    assert fmt(1234.5) == "1234"
    assert fmt(0.012345) == "0.0123"
    assert not math.isnan(float(fmt(1.0)))
    case = case_result(figure=623.0, unit="req/s", limit=3576.0, limit_desc="echo", ratio=0.174, goal="ratio >= 0.35",
                       goal_met=False)
    table = format_table({"async_create_50_conns": case}, {"async_create_50_conns": "p99 139 ms"})
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["case", "figure", "limit"]
    assert "623 req/s" in lines[2] and "NO" in lines[2]
    assert lines[3].strip() == "p99 139 ms"
