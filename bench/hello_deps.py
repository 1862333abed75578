"""The cold-start floor: a functions-framework hello world that needs what every function of ours needs.

It imports the libraries our functions cannot start without (psycopg with its pool, redis-py the way
`shared.core.redis_import` does, pydantic, PyJWT with cryptography), and its first request opens a PostgreSQL
connection, runs one query, PINGs Redis and verifies an HS256 token, then answers 200. None of our code: the
gap between this and bench/hello.py is what those libraries and one round trip to each store cost, which no
function that reaches the database can avoid. Run as
`python -m functions_framework --target hello_deps --source bench/hello_deps.py --asgi`.
"""

import os

import functions_framework.aio
import jwt
import psycopg
import psycopg_pool  # noqa: F401  # our functions import the pool too
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from shared.core.redis_import import aioredis


class _Answer(BaseModel):
    database: int
    redis: bool


@functions_framework.aio.http
async def hello_deps(request: Request) -> JSONResponse:
    """One query, one PING, one token check; 200."""
    token = jwt.encode({"sub": "floor"}, "x" * 32, algorithm="HS256")
    jwt.decode(token, "x" * 32, algorithms=["HS256"])
    async with await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        row = await (await conn.execute("SELECT 1")).fetchone()
    client = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        pong = bool(await client.ping())
    finally:
        await client.aclose()
    return JSONResponse(_Answer(database=row[0] if row else 0, redis=pong).model_dump())
