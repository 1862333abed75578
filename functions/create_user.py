"""POST /api/users: a sales manager asks for a user (202 queued, or 201 created)."""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.creation.creation import create_user_request, validate_idempotency_key
from shared.creation.models import CreateUserCommand
from shared.http import endpoint, json_object, read_json


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.SALES_MANAGER, Role.ADMIN))
async def create_user(request: Request, deps: Deps, principal: Principal) -> Response:
    """Validate, then hand the command to the creation use case."""
    command = CreateUserCommand.model_validate(json_object(await read_json(request, deps.settings.max_body_bytes)))
    key = validate_idempotency_key(request.headers.get("idempotency-key"))
    answer = await create_user_request(deps, principal, command, key)
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)
