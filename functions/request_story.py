"""GET /api/admin/requests/{request_id}: one request, its trace id and its timeline (admin, viewer)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint
from shared.operations.request_story import request_story as load_story


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def request_story(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """404 for an unknown id."""
    return await load_story(deps, request.url.path.rstrip("/").rsplit("/", 1)[-1])
