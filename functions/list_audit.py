"""GET /api/admin/audit: every admin change, newest first (?limit, &after_id); admin, viewer."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from shared.bootstrap import Deps
from shared.core.audit import read_audit
from shared.core.auth import Principal, Role
from shared.creation.models import AuditQuery
from shared.http import endpoint


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def list_audit(request: Request, deps: Deps, principal: Principal) -> dict[str, Any]:
    """`after_id` pages on to older rows (ids below it)."""
    query = AuditQuery.model_validate(dict(request.query_params))
    return {"items": await read_audit(deps.pool, limit=query.limit, after_id=query.after_id)}
