"""GET /sales (and its /sales/assets/*): the sales desk, static files only, under the panel's strict CSP.

The page holds no data: it calls the users API with the bearer token of the tab (the panel's sign-in).
"""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.panel_assets import SALES_DIR, SECURITY_HEADERS, asset


@functions_framework.aio.http
async def sales_desk(request: Request) -> Response:
    """The page at /sales, its files under /sales/assets/."""
    if request.method not in ("GET", "HEAD"):
        return JSONResponse({"error": {"code": "method_not_allowed", "message": "use GET", "details": None}},
                            status_code=405, headers={"Allow": "GET"})
    path = request.url.path.rstrip("/")
    name = "index.html" if path == "/sales" else path.rsplit("/", 1)[-1]
    found = asset(name, SALES_DIR) if (path == "/sales" or path.startswith("/sales/assets/")) else None
    if found is None:
        return JSONResponse({"error": {"code": "not_found", "message": "no such file", "details": None}},
                            status_code=404)
    content, content_type = found
    return Response(content, media_type=content_type, headers=SECURITY_HEADERS)
