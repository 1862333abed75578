"""PATCH /api/admin/accounts/{account_id}: a new role (`{role, reason}`); the account's older sessions end."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.accounts.lifecycle import ChangeRoleCommand, change_role
from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint, json_object, read_json


@functions_framework.aio.http
@endpoint(methods=("PATCH",), roles=(Role.ADMIN,))
async def change_account_role(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """200 the account; 404 unknown; 409 the caller's own or the last admin account; 422 bad body."""
    command = ChangeRoleCommand.model_validate(json_object(await read_json(request, deps.settings.max_body_bytes)))
    account_id = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    return await change_role(deps, account_id, command, actor=principal.subject)
