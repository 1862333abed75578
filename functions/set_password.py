"""POST /api/account/password: the holder of a welcome link sets the account's password."""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.accounts.password_setup import SetPasswordCommand
from shared.accounts.password_setup import set_password as set_account_password
from shared.bootstrap import Deps
from shared.core.auth import Principal
from shared.http import endpoint, json_object, read_json


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=())
async def set_password(request: Request, deps: Deps, principal: Principal) -> Response:
    """204 set; 404 unknown link; 410 used or expired; 422 weak password."""
    command = SetPasswordCommand.model_validate(json_object(await read_json(request, deps.settings.max_body_bytes)))
    await set_account_password(deps, command)
    return Response(status_code=204)
