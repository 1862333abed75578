"""POST /api/admin/system/mode: flip the kill switch (reason required, optimistic locking)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.creation.models import SetModeCommand
from shared.creation.traffic import set_mode as set_traffic_mode
from shared.http import endpoint, json_object, read_json
from shared.operations.admin import current_mode_view


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN,))
async def set_mode(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Answers the new state; 409 when `expected_version` is stale."""
    command = SetModeCommand.model_validate(json_object(await read_json(request, deps.settings.max_body_bytes)))
    state = await set_traffic_mode(deps.pool, command, actor=principal.subject, source=deps.source)
    deps.mode_cache.invalidate()
    return await current_mode_view(deps, state)
