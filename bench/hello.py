"""A functions-framework hello world: the cold-start limit (same server and flags as every function)."""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import PlainTextResponse


@functions_framework.aio.http
async def hello(request: Request) -> PlainTextResponse:
    """Always 200."""
    return PlainTextResponse("hello")
