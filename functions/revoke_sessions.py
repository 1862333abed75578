"""POST /api/admin/accounts/{account_id}/sessions/revoke: every token of the account issued so far ends."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.accounts.lifecycle import ReasonCommand
from shared.accounts.lifecycle import revoke_sessions as revoke_account_sessions
from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint, json_object, read_json


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN,))
async def revoke_sessions(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """200 `{account_id, revoked_before}`; 404 unknown; 422 no reason."""
    command = ReasonCommand.model_validate(json_object(await read_json(request, deps.settings.max_body_bytes)))
    account_id = request.url.path.rstrip("/").rsplit("/", 3)[-3]
    return await revoke_account_sessions(deps, account_id, command, actor=principal.subject)
