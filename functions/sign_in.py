"""POST /api/auth/sign-in: email and password for a bearer token."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.accounts.signin import SignInCommand, client_address
from shared.accounts.signin import sign_in as sign_in_account
from shared.bootstrap import Deps
from shared.core.auth import Principal
from shared.http import endpoint, json_object, read_json


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=())
async def sign_in(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """200 `{access_token, token_type, expires_in}`; 401 wrong email or password; 429 too many attempts."""
    command = SignInCommand.model_validate(json_object(await read_json(request, deps.settings.max_body_bytes)))
    address = client_address(request.headers.getlist("x-forwarded-for"),
                             request.client.host if request.client else None, deps.settings.trusted_proxy_hops)
    return await sign_in_account(deps, command, address=address)
