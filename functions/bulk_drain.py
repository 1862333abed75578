"""POST /api/admin/system/drain: create bulk rows recorded while the queue was off (the scheduled trigger)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint
from shared.operations.maintenance import run_drain


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN, Role.SCHEDULER))
async def bulk_drain(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Safe to run at any time and twice at once: each row is claimed by one drain and made by provision()."""
    return await run_drain(deps)
