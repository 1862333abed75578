"""GET /api/admin/system/alerts: the alert target (masked), what fires now and the last alerts."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint
from shared.operations.alerts import recent_alerts


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def list_alerts(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """See `shared.operations.alerts.recent_alerts`."""
    return await recent_alerts(deps.pool, deps.settings)
