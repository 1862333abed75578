"""GET /api/admin/requests?status=failed&limit=50: creation requests in one status (admin)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.auth import Principal, Role
from shared.bootstrap import Deps
from shared.errors import InvalidInput
from shared.http import endpoint
from shared.requests_admin import list_requests as load_requests


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN,))
async def list_requests(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Newest update first."""
    unknown = set(request.query_params) - {"status", "limit"}
    if unknown:
        raise InvalidInput("unknown query parameter", details=[{"field": f, "message": "unknown"} for f in unknown])
    limit = request.query_params.get("limit", "50")
    if not limit.isdigit():
        raise InvalidInput("limit must be a number", details=[{"field": "limit", "message": "not a number"}])
    status = request.query_params.get("status", "failed")
    return {"items": await load_requests(deps, status, int(limit))}
