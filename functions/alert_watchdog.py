"""POST /api/admin/system/watchdog: the scheduled alert check (every minute; also runnable by an admin).

Named alert_watchdog: a module named `watchdog` would shadow the PyPI package of that name."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint
from shared.operations.watchdog import run_watchdog


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN, Role.SCHEDULER))
async def alert_watchdog(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Observe, record transitions as alerts, deliver; answers 200 even with PostgreSQL down."""
    return await run_watchdog(deps)
