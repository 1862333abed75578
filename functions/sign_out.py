"""POST /api/auth/sign-out: the caller's token ends on every instance."""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.accounts.lifecycle import sign_out as end_session
from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN, Role.SALES_MANAGER, Role.VIEWER, Role.MEMBER))
async def sign_out(request: Request, deps: Deps, principal: Principal) -> Response:
    """204; the same token is 401 afterwards."""
    await end_session(deps, principal)
    return Response(status_code=204)
