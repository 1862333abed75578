"""GET /api/users/requests?limit=: the caller's own recent creation requests, newest first."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.creation.own_requests import limit_param, own_requests
from shared.http import endpoint


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.SALES_MANAGER, Role.ADMIN))
async def my_requests(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Only `limit` is accepted (1-200, default 50)."""
    return {"items": await own_requests(deps, principal, limit_param(request.query_params))}
