"""GET /api/admin/accounts: the staff accounts, newest first."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.accounts.staff import list_accounts as list_staff_accounts
from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def list_accounts(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """`{items: [{id, email, full_name, role, created_at, password_set_at, last_sign_in_at}]}`."""
    return await list_staff_accounts(deps)
