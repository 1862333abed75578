"""POST /api/admin/users/{user_id}/erase: remove a person's data from every table and Redis (admin, reason)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.accounts.erase import EraseCommand
from shared.accounts.erase import erase_user as erase_person
from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint, json_object, read_json


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN,))
async def erase_user(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """The user id is the segment before `/erase`; a second erase is a 200 that changes nothing."""
    command = EraseCommand.model_validate(json_object(await read_json(request, deps.settings.max_body_bytes)))
    user_id = request.url.path.rstrip("/").rsplit("/", 2)[-2]
    return await erase_person(deps, user_id, command, actor=principal.subject)
