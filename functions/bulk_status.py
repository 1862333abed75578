"""GET /api/users/bulk (own batches), /api/users/bulk/{batch_id} (progress), .../results.csv (per row)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.bootstrap import Deps
from shared.bulk.upload import batch_status, own_batches, results_csv
from shared.core.auth import Principal, Role
from shared.core.errors import NotFound
from shared.creation.own_requests import limit_param
from shared.http import endpoint


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.SALES_MANAGER, Role.ADMIN))
async def bulk_status(request: Request, deps: Deps, principal: Principal) -> Response | dict[str, Any]:
    """The caller's batch (an admin's: any batch); another caller's is a 404."""
    parts = request.url.path.rstrip("/").split("/")[4:]  # after /api/users/bulk
    if not parts:
        return {"items": await own_batches(deps, principal, limit_param(request.query_params, default=20,
                                                                         maximum=100))}
    if len(parts) == 2 and parts[1] == "results.csv":
        text = await results_csv(deps, principal, parts[0])
        return Response(text, media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{parts[0]}-results.csv"', "Cache-Control": "no-store"})
    if len(parts) != 1:
        raise NotFound("no such batch")
    return await batch_status(deps, principal, parts[0])
