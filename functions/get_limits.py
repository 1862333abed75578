"""GET /api/admin/system/limits: the consumers' runtime limits in force (admin, viewer)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.creation.limits import read_limits
from shared.http import endpoint


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def get_limits(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Version 0 means the configured defaults, never changed at runtime."""
    return (await read_limits(deps.pool, deps.settings)).to_dict()
