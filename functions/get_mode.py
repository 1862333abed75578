"""GET /api/admin/system/mode: the kill switch and the mode this instance really applies."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.admin import current_mode_view
from shared.auth import Principal, Role
from shared.bootstrap import Deps
from shared.http import endpoint


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def get_mode(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Configured mode (read fresh), version, who/when/why, and the effective mode with its reason."""
    return await current_mode_view(deps)
