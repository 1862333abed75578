"""POST /api/admin/accounts/{account_id}/disable: the account may not sign in; its sessions end everywhere."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.accounts.lifecycle import ReasonCommand, set_disabled
from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint, json_object, read_json


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN,))
async def disable_account(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """200 the account; 404 unknown; 409 the caller's own or the last admin account; 422 no reason."""
    command = ReasonCommand.model_validate(json_object(await read_json(request, deps.settings.max_body_bytes)))
    account_id = request.url.path.rstrip("/").rsplit("/", 2)[-2]
    return await set_disabled(deps, account_id, command, disabled=True, actor=principal.subject)
