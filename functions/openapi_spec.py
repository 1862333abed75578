"""GET /openapi.json: the checked-in OpenAPI 3.1 document of every route."""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.openapi import spec_bytes


@functions_framework.aio.http
async def openapi_spec(request: Request) -> Response:
    """Served as it is in the repository."""
    return Response(spec_bytes(), media_type="application/json")
