"""GET /api/admin/requests: search creation requests (?q, status, actor, from, to, limit, cursor); admin, viewer."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.core.errors import InvalidInput
from shared.http import endpoint
from shared.operations.request_search import SEARCH_PARAMS, parse_filter, search_requests


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def list_requests(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Newest first, keyset pages; unknown parameters, bad times and foreign cursors are 422."""
    params = request.query_params
    unknown = sorted(set(params) - SEARCH_PARAMS)
    repeated = sorted(k for k in set(params) if len(params.getlist(k)) > 1)
    if unknown or repeated:
        raise InvalidInput("unknown or repeated query parameter",
                           details=[{"field": f, "message": "unknown"} for f in unknown]
                           + [{"field": f, "message": "given more than once"} for f in repeated])
    limit = params.get("limit", "50")
    if not limit.isascii() or not limit.isdigit() or len(limit) > 4:
        raise InvalidInput("limit must be 1-500", details=[{"field": "limit", "message": "1-500"}])
    return await search_requests(deps, parse_filter(params), limit=int(limit), cursor=params.get("cursor") or None)
