"""The smallest useful endpoint on the stack: read the body, one Redis round trip, answer 202.

It is the limit of `async_create_50_conns`: the same server (functions-framework, gunicorn + uvicorn), the same
Redis, the same load, none of our code. Run as
`python -m functions_framework --target redis_echo --source bench/redis_echo.py --asgi`.
"""

import os

import functions_framework.aio
import redis.asyncio as aioredis
from starlette.requests import Request
from starlette.responses import JSONResponse

_client: aioredis.Redis | None = None


def _redis() -> aioredis.Redis:
    """One client per process, made on first use (as the functions' own adapters are)."""
    global _client
    if _client is None:
        _client = aioredis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True, socket_timeout=5,
                                          socket_connect_timeout=5, health_check_interval=0, max_connections=64)
    return _client


@functions_framework.aio.http
async def redis_echo(request: Request) -> JSONResponse:
    """PING Redis once; 202 like the create path."""
    await request.body()
    await _redis().ping()
    return JSONResponse({"status": "queued"}, status_code=202)
