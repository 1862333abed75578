"""GET /api/admin/requests?status=failed&limit=50: creation requests in one status (admin)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.auth import Principal, Role
from shared.bootstrap import Deps
from shared.http import endpoint
from shared.models import RequestListQuery
from shared.requests_admin import list_requests as load_requests


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN,))
async def list_requests(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Newest update first; unknown or malformed query values are a 422."""
    query = RequestListQuery.model_validate(dict(request.query_params))
    return {"items": await load_requests(deps, query.status, query.limit)}
