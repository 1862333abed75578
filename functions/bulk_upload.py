"""POST /api/users/bulk: many users in one upload (CSV or JSON array): 202 with the batch."""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.bootstrap import Deps
from shared.bulk.upload import accept_upload
from shared.core.auth import Principal, Role
from shared.creation.creation import validate_idempotency_key
from shared.http import endpoint, read_body


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.SALES_MANAGER, Role.ADMIN))
async def bulk_upload(request: Request, deps: Deps, principal: Principal) -> Response:
    """The raw file (at most BULK_MAX_BYTES) goes to the bulk use case."""
    body = await read_body(request, deps.settings.bulk_max_bytes)
    key = validate_idempotency_key(request.headers.get("idempotency-key"))
    answer = await accept_upload(deps, principal, body, request.headers.get("content-type"), key)
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)
