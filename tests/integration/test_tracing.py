"""Traces end to end with real processes: the create function and a consumer write spans to one JSONL sink."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from local.processes import find_free_port
from local.traces import read_spans, span_tree
from tests.conftest import auth, wait_until
from tests.integration.test_consumer import start_consumer
from tests.support.functions import FunctionProcess
from tests.support.pii import EMAIL, find_secrets

pytestmark = pytest.mark.slow


@pytest.fixture
def functions():
    started: list[FunctionProcess] = []
    yield started
    for process in started:
        process.stop()


def start_function(functions: list[FunctionProcess], stack, tmp_path: Path, **env: str) -> FunctionProcess:
    process = FunctionProcess("create_user", {**stack.env(), **env}, tmp_path).start()
    functions.append(process)
    return process


def new_traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in spans}


def assert_no_pii(sink: Path, *forbidden: str) -> None:
    text = sink.read_bytes()
    assert not EMAIL.search(text)
    for word in forbidden:
        assert word.encode() not in text


async def test_one_trace_from_the_request_through_the_queue_the_consumer_and_ses(
        deps, consumers, functions, stack, tmp_path, db, tokens):
    sink = tmp_path / "spans.jsonl"
    start_consumer(consumers, stack, tmp_path, env={"TRACE_FILE": str(sink)})
    create = start_function(functions, stack, tmp_path, TRACE_FILE=str(sink))
    trace_id, caller_span, traceparent = new_traceparent()
    async with httpx.AsyncClient(base_url=create.url, timeout=10) as client:
        answer = await client.post("/api/users", json={"email": "traced.person@example.com",
                                                       "full_name": "Traced Person"},
                                   headers={**auth(tokens["sales_manager"]), "traceparent": traceparent})
    assert answer.status_code == 202
    request_id = answer.json()["request_id"]

    def spans_in() -> dict[str, dict[str, Any]]:
        found = by_name(read_spans(sink, trace_id))
        # (each process exports in its own batches: the consumer's spans may be written before the server's)
        return found if {"POST create_user", "consumer.job", "ses.send_email"} <= found.keys() else {}

    spans = await wait_until(spans_in, timeout=20, interval=0.2)
    server, enqueue, job = spans["POST create_user"], spans["redis.enqueue"], spans["consumer.job"]
    assert server["parent_span_id"] == caller_span and server["kind"] == "SERVER"  # the caller's trace, continued
    assert enqueue["parent_span_id"] == server["span_id"]
    assert job["parent_span_id"] == server["span_id"] and job["service"] == "consumer"  # via the job's data
    assert job["links"] == [f"{trace_id}-{server['span_id']}"]
    provision, ses = spans["db.provision"], spans["ses.send_email"]
    assert provision["parent_span_id"] == job["span_id"] and provision["attributes"]["via"] == "consumer"
    assert ses["parent_span_id"] == job["span_id"] and ses["attributes"] == {"request_id": request_id}

    row = db.execute("SELECT trace_id, traceparent FROM creation_requests WHERE id = %s", (request_id,)).fetchone()
    assert row["trace_id"] == trace_id and row["traceparent"] == f"00-{trace_id}-{server['span_id']}-01"
    events = db.execute("SELECT event, metadata FROM system_health_logs WHERE metadata->>'request_id' = %s",
                        (request_id,)).fetchall()
    assert {"creation_requested", "user_created"} <= {e["event"] for e in events}
    assert {e["metadata"].get("trace_id") for e in events} == {trace_id}

    tree = span_tree(read_spans(sink, trace_id))
    assert tree[0].startswith("POST create_user") and any(line.startswith("  consumer.job") for line in tree)
    assert_no_pii(sink, "Traced Person", tokens["sales_manager"])
    assert find_secrets(stack.redis_url, stack.queue_prefix, stack.database_url,
                        [b"Traced Person", tokens["sales_manager"].encode()]) == []


async def test_a_job_without_its_trace_context_continues_the_trace_from_the_request_row(
        deps, consumers, functions, stack, tmp_path, db, tokens):
    """A job re-enqueued without the context (as the reconciler does) still becomes a child of the request's
    span: the consumer reads `creation_requests.traceparent`."""
    sink = tmp_path / "spans.jsonl"
    start_consumer(consumers, stack, tmp_path, env={"TRACE_FILE": str(sink)})
    create = start_function(functions, stack, tmp_path, TRACE_FILE=str(sink))
    await deps.queue.queue.pause()
    try:
        trace_id, _, traceparent = new_traceparent()
        async with httpx.AsyncClient(base_url=create.url, timeout=10) as client:
            answer = await client.post("/api/users", json={"email": "requeued@example.com", "full_name": "Re Q"},
                                       headers={**auth(tokens["sales_manager"]), "traceparent": traceparent})
        assert answer.status_code == 202
        request_id = answer.json()["request_id"]
        job = await deps.queue.queue.getJob(request_id)
        assert job.data["traceparent"].startswith(f"00-{trace_id}-")  # carried by the normal path
        await deps.queue.remove_job(request_id)
        await deps.queue.enqueue(request_id)  # the reconciler's way: no context in the job
        assert (await deps.queue.queue.getJob(request_id)).data == {"request_id": request_id}
    finally:
        await deps.queue.queue.resume()

    def spans_in() -> dict[str, dict[str, Any]]:
        found = by_name(read_spans(sink, trace_id))
        return found if {"POST create_user", "consumer.job"} <= found.keys() else {}

    spans = await wait_until(spans_in, timeout=20, interval=0.2)
    assert spans["consumer.job"]["parent_span_id"] == spans["POST create_user"]["span_id"]


@pytest.mark.parametrize("path", ["sync", "fallback"])
async def test_sync_and_fallback_continue_the_same_trace(deps, functions, stack, tmp_path, db, tokens, path):
    sink = tmp_path / "spans.jsonl"
    env = {"TRACE_FILE": str(sink)}
    if path == "sync":
        db.execute("UPDATE system_config SET value = 'sync_direct' WHERE key = 'traffic_mode'")
    else:
        env["REDIS_URL"] = f"redis://127.0.0.1:{find_free_port()}/0"  # nothing listens: the fallback
    create = start_function(functions, stack, tmp_path, **env)
    trace_id, caller_span, traceparent = new_traceparent()
    async with httpx.AsyncClient(base_url=create.url, timeout=10) as client:
        answer = await client.post("/api/users", json={"email": f"{path}.traced@example.com", "full_name": "Sync T"},
                                   headers={**auth(tokens["sales_manager"]), "traceparent": traceparent})
    assert answer.status_code == 201 and answer.json()["fallback"] is (path == "fallback")
    spans = await wait_until(lambda: (lambda s: s if "ses.send_email" in s else {})(by_name(read_spans(
        sink, trace_id))), timeout=10, interval=0.2)
    server = spans["POST create_user"]
    assert server["parent_span_id"] == caller_span
    assert spans["db.provision"]["parent_span_id"] == server["span_id"]
    assert spans["db.provision"]["attributes"]["via"] == path
    assert spans["ses.send_email"]["parent_span_id"] == server["span_id"]
    row = db.execute("SELECT trace_id FROM creation_requests WHERE id = %s", (answer.json()["request_id"],)).fetchone()
    assert row["trace_id"] == trace_id
    assert_no_pii(sink, "Sync T", tokens["sales_manager"])


async def test_a_failing_trace_exporter_never_fails_a_request(deps, functions, stack, tmp_path, db, tokens, figures):
    dead = f"http://127.0.0.1:{find_free_port()}"  # OTLP endpoint with nothing listening
    # The queue path without a consumer (NO_CONSUMER_FALLBACK=false): the request's own spans are under test.
    create = start_function(functions, stack, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=dead, NO_CONSUMER_FALLBACK="false")
    statuses = []
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=create.url, timeout=10) as client:
        for i in range(30):
            answer = await client.post("/api/users", json={"email": f"otlp-{i}@example.com", "full_name": "O"},
                                       headers={**auth(tokens["sales_manager"]), "traceparent": new_traceparent()[2]})
            statuses.append(answer.status_code)
    elapsed = time.perf_counter() - started
    assert statuses == [202] * 30
    traced = db.execute("SELECT count(*) AS n FROM creation_requests WHERE trace_id IS NOT NULL").fetchone()["n"]
    assert traced == 30
    figures(requests_with_dead_otlp_endpoint=len(statuses), mean_answer_ms=elapsed / len(statuses) * 1000)


def test_the_span_tree_nests_children_under_parents():
    spans = [
        {"trace_id": "t", "span_id": "b", "parent_span_id": "a", "name": "child", "service": "s", "start_ns": 2,
         "end_ns": 3_000_002, "status": "UNSET", "attributes": {}},
        {"trace_id": "t", "span_id": "a", "parent_span_id": "remote", "name": "root", "service": "s", "start_ns": 1,
         "end_ns": 5_000_001, "status": "ERROR", "attributes": {"request_id": "req_1"}},
    ]
    assert span_tree(json.loads(json.dumps(spans))) == [
        "root  5.00 ms  [s] ERROR  request_id=req_1 (parent in another process)",
        "  child  3.00 ms  [s]"]
