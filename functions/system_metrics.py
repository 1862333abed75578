"""GET /api/admin/system/metrics: queue, consumers, switch; within 1 s even with Redis down."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint
from shared.operations.admin import system_metrics as collect_metrics


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def system_metrics(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """See `shared.operations.admin.system_metrics`."""
    return await collect_metrics(deps)
