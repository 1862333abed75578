"""GET /api/admin/system/mode: the kill switch and the mode this instance really applies."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint
from shared.operations.admin import current_mode_view


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def get_mode(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Configured mode (read fresh), version, who/when/why, and the effective mode with its reason."""
    return await current_mode_view(deps)
