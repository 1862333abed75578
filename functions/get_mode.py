"""GET /api/admin/system/mode: the kill switch and the mode this instance really applies."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.admin import mode_view
from shared.auth import Principal, Role
from shared.bootstrap import Deps
from shared.http import endpoint


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN,))
async def get_mode(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Configured mode, version, who/when/why, and the effective mode with its reason."""
    return mode_view(await deps.mode_cache.current(), await deps.fallback_reason())
