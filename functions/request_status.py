"""GET /api/users/requests/{request_id}: where a creation request stands."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.creation.creation import request_status as load_request_status
from shared.http import endpoint


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.SALES_MANAGER, Role.ADMIN))
async def request_status(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """The request id is the last path segment; only the caller's own requests (admins: all)."""
    return await load_request_status(deps, principal, request.url.path.rstrip("/").rsplit("/", 1)[-1])
