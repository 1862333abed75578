"""GET /healthz: the process answers (no dependency is checked: that is what metrics are for)."""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import JSONResponse


@functions_framework.aio.http
async def healthz(request: Request) -> JSONResponse:
    """Always `{"status": "ok"}` while the process serves."""
    return JSONResponse({"status": "ok"})
