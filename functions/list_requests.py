"""GET /api/admin/requests: search creation requests (?q, status, actor, from, to, limit, cursor); admin, viewer."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint
from shared.operations.request_search import parse_search_query, search_requests


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def list_requests(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Newest first, keyset pages; unknown or repeated parameters, bad times and foreign cursors are 422."""
    query = parse_search_query(request.query_params.multi_items())
    return await search_requests(deps, query.filter, limit=query.limit, cursor=query.cursor)
