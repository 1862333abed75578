"""POST /api/admin/system/cleanup: delete health logs past the retention (also the scheduled trigger)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint
from shared.operations.maintenance import run_cleanup


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN, Role.SCHEDULER))
async def cleanup_logs(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Safe to run twice: the second run deletes nothing."""
    return await run_cleanup(deps, actor=principal.subject)
