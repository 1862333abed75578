"""POST /api/admin/requests/{request_id}/retry: send a failed request through the normal path again (admin)."""

from typing import Any

import functions_framework.aio
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint, json_object, read_json
from shared.operations.requests_admin import retry_request as retry_failed_request


class RetryCommand(BaseModel):
    """Why the admin retries (kept in the health log)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=3, max_length=500)


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN,))
async def retry_request(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """The request id is the segment before `/retry`."""
    command = RetryCommand.model_validate(json_object(await read_json(request, deps.settings.max_body_bytes)))
    request_id = request.url.path.rstrip("/").rsplit("/", 2)[-2]
    return await retry_failed_request(deps, principal, request_id, command.reason)
