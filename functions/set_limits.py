"""POST /api/admin/system/limits: change the rate limit and consumer concurrency without a restart (admin)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.creation.limits import SetLimitsCommand
from shared.creation.limits import set_limits as store_limits
from shared.http import endpoint, json_object, read_json


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN,))
async def set_limits(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """Bounds -> 422; a stale `expected_version` -> 409; every consumer obeys within a second."""
    command = SetLimitsCommand.model_validate(json_object(await read_json(request, deps.settings.max_body_bytes)))
    limits = await store_limits(deps.pool, deps.settings, command, actor=principal.subject, source=deps.source)
    return limits.to_dict()
