"""GET /metrics: Prometheus text format, derived from PostgreSQL and Redis (right with many instances)."""

import functions_framework.aio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from shared.bootstrap import Deps
from shared.core.auth import Principal, Role
from shared.http import endpoint
from shared.operations.prometheus_export import exposition


@functions_framework.aio.http
@endpoint(methods=("GET",), roles=(Role.ADMIN, Role.VIEWER))
async def prometheus_metrics(request: Request, deps: Deps, principal: Principal) -> Response:
    """See `shared.operations.prometheus_export`."""
    return Response(await exposition(deps), media_type=CONTENT_TYPE_LATEST)
