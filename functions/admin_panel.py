"""GET /admin/system-health (and its /admin/assets/*): the System Health panel, static files only.

The page holds no data: it calls the admin API with the bearer token the admin pastes (kept for the tab).
"""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.panel_assets import SECURITY_HEADERS, asset


@functions_framework.aio.http
async def admin_panel(request: Request) -> Response:
    """The page at /admin/system-health, its files under /admin/assets/."""
    if request.method not in ("GET", "HEAD"):
        return JSONResponse({"error": {"code": "method_not_allowed", "message": "use GET", "details": None}},
                            status_code=405, headers={"Allow": "GET"})
    path = request.url.path.rstrip("/")
    name = "index.html" if path == "/admin/system-health" else path.rsplit("/", 1)[-1]
    found = asset(name) if (path == "/admin/system-health" or path.startswith("/admin/assets/")) else None
    if found is None:
        return JSONResponse({"error": {"code": "not_found", "message": "no such file", "details": None}},
                            status_code=404)
    content, content_type = found
    return Response(content, media_type=content_type, headers=SECURITY_HEADERS)
