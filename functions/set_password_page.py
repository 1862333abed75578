"""GET /set-password#token=...: the page where a new user chooses a password (static; the token is in the
fragment, which the browser never sends here, and stays in the browser until the page posts it to
POST /api/account/password; the older `?token=` links still work)."""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.panel_assets import SECURITY_HEADERS, asset


@functions_framework.aio.http
async def set_password_page(request: Request) -> Response:
    """The same page for every token: it says nothing about a token until the holder submits a password."""
    if request.method not in ("GET", "HEAD"):
        return JSONResponse({"error": {"code": "method_not_allowed", "message": "use GET", "details": None}},
                            status_code=405, headers={"Allow": "GET"})
    found = asset("set-password.html")
    if found is None:  # the file ships in the package; its absence is a broken build
        return JSONResponse({"error": {"code": "not_found", "message": "no such page", "details": None}},
                            status_code=404)
    content, content_type = found
    return Response(content, media_type=content_type, headers=SECURITY_HEADERS)
