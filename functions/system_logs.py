"""GET /api/admin/system/logs: health events, newest first (?limit, &level, &after_id)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.core.health import LogQuery, list_events
from shared.http import endpoint


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def system_logs(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Query parameters are validated like a body: unknown ones are refused."""
    query = LogQuery.model_validate(dict(request.query_params))
    return {"items": await list_events(deps.pool, query)}
