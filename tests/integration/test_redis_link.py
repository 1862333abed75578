"""The request path's multiplexed Redis link (shared/core/redis_link.py) against the real Redis: replies reach the
caller that sent the command, a job it adds is the job bullmq's own `Queue.add` writes (bullmq's tools read it),
and a Redis that stops answering fails the waiting commands within their timeout, after which it reconnects."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.core.redis_import import aioredis
from shared.core.redis_link import RedisLink, RedisReplyError, Script
from shared.creation.queueing import JOB_NAME, JobQueue, job_options, request_path_client


async def test_concurrent_commands_each_get_their_own_reply(stack):
    link = RedisLink(stack.redis_url, 2.0)
    try:
        replies = await asyncio.gather(*(link.command("ECHO", f"caller-{i}") for i in range(500)))
        assert replies == [f"caller-{i}" for i in range(500)]
        with pytest.raises(RedisReplyError):
            await link.command("NO-SUCH-COMMAND")
        assert await link.command("ECHO", "after an error reply") == "after an error reply"
    finally:
        await link.aclose()


async def test_a_script_unknown_to_redis_is_loaded_then_run_by_sha(stack):
    link = RedisLink(stack.redis_url, 2.0)
    script = Script(f"return ARGV[1] .. ':{time.time_ns()}'")  # new text: Redis cannot know its SHA yet
    try:
        assert (await link.evalsha(script, [], ["a"])).startswith("a:")
        assert await link.command("SCRIPT", "EXISTS", script.sha) == [1]
        assert (await link.evalsha(script, [], ["b"])).startswith("b:")
    finally:
        await link.aclose()


async def test_a_job_added_on_the_link_is_what_queue_add_writes(stack, settings):
    prefix = f"{stack.queue_prefix}-link{time.time_ns()}"
    linked = JobQueue(request_path_client(stack.redis_url, 1.0), settings.model_copy(update={"queue_prefix": prefix}),
                      link=RedisLink(stack.redis_url, 1.0))
    plain = JobQueue(request_path_client(stack.redis_url, 1.0), settings.model_copy(update={"queue_prefix": prefix}))
    raw = aioredis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        await linked.enqueue("req_linked", traceparent="")
        await plain.queue.add(JOB_NAME, {"request_id": "req_plain", "traceparent": ""},
                              job_options(settings, "req_plain"))
        # bullmq's own reader opens both the same way
        by_link, by_add = await plain.queue.getJob("req_linked"), await plain.queue.getJob("req_plain")
        assert by_link is not None and by_add is not None
        assert by_link.name == by_add.name == JOB_NAME
        assert by_link.data == {"request_id": "req_linked", "traceparent": ""}
        assert by_link.opts == {**by_add.opts, "jobId": "req_linked"}
        assert await plain.queue.getJobCounts("waiting") == {"waiting": 2}
        # and the stored hashes hold the same fields, the id-bearing ones aside
        stored = {job: await raw.hgetall(f"{prefix}:{settings.queue_name}:{job}")
                  for job in ("req_linked", "req_plain")}
        assert set(stored["req_linked"]) == set(stored["req_plain"])
        assert {k: v for k, v in stored["req_linked"].items() if k not in ("data", "opts", "timestamp")} == \
            {k: v for k, v in stored["req_plain"].items() if k not in ("data", "opts", "timestamp")}
        # the same id again is a no-op, as with Queue.add (job id = request id)
        await linked.enqueue("req_linked", traceparent="")
        assert await plain.queue.getJobCounts("waiting") == {"waiting": 2}
    finally:
        await plain.queue.obliterate(force=True)
        await linked.close()
        await plain.close()
        await raw.aclose()


async def test_a_hanging_redis_fails_the_waiting_commands_in_time_and_the_link_reconnects(proxy):
    link = RedisLink(proxy.url, 0.3)
    try:
        assert await link.command("PING") == "PONG"
        proxy.set_mode("blackhole")
        started = time.monotonic()
        results = await asyncio.gather(*(link.command("ECHO", str(i)) for i in range(20)), return_exceptions=True)
        assert all(isinstance(r, TimeoutError | ConnectionError) for r in results), results
        assert time.monotonic() - started < 2.0  # the bound is the feature: 0.3 s per command, not Redis' mercy
        proxy.set_mode("pass")
        assert await link.command("ECHO", "back") == "back"
    finally:
        await link.aclose()
