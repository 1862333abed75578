"""POST /api/admin/requests/retry: retry failed requests by ids or by filter, with a reason; dry run first."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import JSONResponse

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint, json_object, read_json
from shared.operations.bulk_retry import BulkRetryCommand, dry_run
from shared.operations.bulk_retry import bulk_retry as retry_many

MAX_BODY_BYTES = 2 * 1024 * 1024  # up to 10,000 ids


@functions_framework.aio.http
@endpoint(methods=("POST",), roles=(Role.ADMIN,))
async def bulk_retry(request: Request, deps: Deps, principal: Principal) -> dict[str, Any] | JSONResponse:
    """Dry run: 200 counts. Real run: 202 `{retried, skipped}`, or 200 when nothing is retried."""
    command = BulkRetryCommand.model_validate(json_object(await read_json(request, MAX_BODY_BYTES)))
    if command.dry_run:
        return await dry_run(deps, command)
    status, answer = await retry_many(deps, principal, command)
    return JSONResponse(answer, status_code=status)
