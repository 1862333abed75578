"""The cases, in the order they run (later ones reuse figures of earlier ones as their limits)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.cases.accounts import sign_in
from bench.cases.bulk import bulk_upload_5000
from bench.cases.coldstart import cold_start
from bench.cases.consumer import (
    consumer_1_process,
    consumer_2_processes,
    idle_pickup,
    rate_limit_10_per_s,
)
from bench.cases.http import (
    async_create_1_client,
    async_create_50_conns,
    fallback_redis_hanging,
    kill_switch_propagation,
    sync_create_1_client,
)
from bench.cases.paced import paced_create_rate
from bench.cases.peer import peer_202_1_conn, peer_202_50_conns, peer_consumer
from bench.cases.search import search_1m
from bench.cases.tracing import tracing_cost_202

Case = Callable[[Any], Awaitable[dict[str, Any]]]

CASES: dict[str, Case] = {
    "async_create_1_client": async_create_1_client,
    "async_create_50_conns": async_create_50_conns,
    "peer_202_1_conn": peer_202_1_conn,
    "peer_202_50_conns": peer_202_50_conns,
    "sync_create_1_client": sync_create_1_client,
    "fallback_redis_hanging": fallback_redis_hanging,
    "consumer_1_process": consumer_1_process,
    "consumer_2_processes": consumer_2_processes,
    "peer_consumer": peer_consumer,
    "rate_limit_10_per_s": rate_limit_10_per_s,
    "idle_pickup": idle_pickup,
    "kill_switch_propagation": kill_switch_propagation,
    "paced_create_rate": paced_create_rate,
    "cold_start": cold_start,
    "tracing_cost_202": tracing_cost_202,
    "sign_in": sign_in,
    "bulk_upload_5000": bulk_upload_5000,
    "search_1m": search_1m,
}
