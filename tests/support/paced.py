"""An open-loop paced load: request i is due at t0 + i / rate, sent by one of a bounded fleet of keep-alive senders.

Used by the load test and by the `paced_create_rate` bench case (`python -m tests.support.paced ...` prints one
JSON line). A slow system shows as an achieved rate below the target; every figure comes from the answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from typing import Any

import httpx


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a sorted, non-empty sample."""
    return sorted_values[max(1, math.ceil(q / 100 * len(sorted_values))) - 1]


async def paced_load(urls: list[str], token: str, *, total: int, rate: float, connections: int, prefix: str,
                     t0: float | None = None) -> dict[str, Any]:
    """POST `total` creations (`{prefix}-{i}@example.com`) to `urls` in turn, paced at `rate`/s from `t0`.

    A bounded set of senders, not `total` coroutines waiting in the HTTP client's pool: such a pool wait is itself
    quadratic and would measure the client, not the system.
    """
    if not all(u.startswith(("http://127.0.0.1:", "http://localhost:")) for u in urls):
        raise ValueError("load is only ever sent to this machine")
    latencies: list[float] = []
    codes: dict[int, int] = {}
    errors: dict[str, int] = {}
    accepted: list[str] = []
    next_index = iter(range(total))
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        started = time.perf_counter() if t0 is None else t0

        async def sender() -> None:
            for i in next_index:
                await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
                t = time.perf_counter()
                address = f"{prefix}-{i}@example.com"
                try:
                    r = await http.post(urls[i % len(urls)] + "/api/users",
                                        headers={"Authorization": f"Bearer {token}"},
                                        json={"email": address, "full_name": f"Load {i}"})
                except httpx.HTTPError as err:
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code in (201, 202):
                    accepted.append(address)

        await asyncio.gather(*(sender() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    answered = len(latencies)
    return {"codes": codes, "errors": errors, "answered": answered, "elapsed_s": elapsed,
            "target_rate": rate, "achieved_rate": answered / elapsed if elapsed > 0 else 0.0,
            "p50_ms": 1000 * nearest_rank(latencies, 50) if latencies else None,
            "p99_ms": 1000 * nearest_rank(latencies, 99) if latencies else None,
            "addresses": [f"{prefix}-{i}@example.com" for i in range(total)], "accepted": accepted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    result = asyncio.run(paced_load(args.url, args.token, total=args.total, rate=args.rate,
                                    connections=args.connections, prefix=args.prefix))
    result.pop("addresses")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
