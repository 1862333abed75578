"""POST /api/admin/accounts/{account_id}/welcome: send the welcome email again (new link, old ones dead)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.accounts.staff import resend_welcome as resend_welcome_email
from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN,))
async def resend_welcome(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """`{account_id, email: sent|pending, links_revoked}`; 404 unknown account."""
    account_id = request.url.path.rstrip("/").rsplit("/", 2)[-2]
    return await resend_welcome_email(deps, account_id, actor=principal.subject)
