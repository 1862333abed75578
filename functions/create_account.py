"""POST /api/admin/accounts: an admin makes a staff account (admin, sales_manager or viewer)."""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.accounts.staff import CreateAccountCommand
from shared.accounts.staff import create_account as create_staff_account
from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint, json_object, read_json


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN,))
async def create_account(request: Request, deps: Deps, principal: Principal) -> Response:
    """201 `{account, email}`; 409 when the address has a user already."""
    command = CreateAccountCommand.model_validate(json_object(await read_json(request,
                                                                              deps.settings.max_body_bytes)))
    created = await create_staff_account(deps, command, actor=principal.subject)
    return JSONResponse({"account": created.account, "email": "sent" if created.email_sent else "pending"},
                        status_code=201)
