"""POST /api/admin/system/tick: the per-minute scheduled duty (a kill switch whose time is up returns)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint
from shared.operations.maintenance import run_tick


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN, Role.SCHEDULER))
async def system_tick(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Safe to run any number of times: it changes something only when a return is due."""
    return await run_tick(deps)
