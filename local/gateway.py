"""The local gateway: one address (127.0.0.1:8080) in front of every function, routed by the manifest.

In the cloud a load balancer's URL map does this; locally it is a small reverse proxy. Unknown paths get the
contract's JSON 404, a known path with another method a 405.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infra.manifest import FunctionSpec, load_manifest, match_route

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": None}}, status_code=status, headers=headers
    )


def build_app(upstreams: dict[str, str], specs: dict[str, FunctionSpec] | None = None) -> Starlette:
    """A Starlette app proxying each manifest route to `upstreams[function name]` (a base URL)."""
    specs = specs or load_manifest()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0), limits=limits) as client:
            state["client"] = client
            yield

    async def proxy(request: Request) -> Response:
        spec, allowed = match_route(specs, request.method, request.url.path)
        if spec is None:
            if allowed:
                return _error(405, "method_not_allowed", "method not allowed on this path",
                              {"Allow": ", ".join(allowed)})
            return _error(404, "not_found", "no such route")
        base = upstreams.get(spec.name)
        if base is None:
            return _error(503, "function_unavailable", f"{spec.name} is not running", {"Retry-After": "5"})
        # Raw bytes both ways: a header value need not be ASCII (the function decides what is valid).
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in HOP_BY_HOP]
        headers.append((b"x-forwarded-for", (request.client.host if request.client else "").encode()))
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            upstream = await state["client"].request(request.method, url, headers=headers, content=await request.body())
        except httpx.HTTPError as exc:
            return _error(
                503, "function_unavailable", f"{spec.name} did not answer ({type(exc).__name__})", {"Retry-After": "5"}
            )
        response = Response(upstream.content, status_code=upstream.status_code)
        response.raw_headers = [(k, v) for k, v in upstream.headers.raw
                                if k.decode("latin-1").lower() not in HOP_BY_HOP | {"date", "server"}]
        response.raw_headers.append((b"content-length", str(len(upstream.content)).encode()))
        return response

    async def not_found(request: Request, exc: Exception) -> Response:
        # Paths Starlette itself cannot route (e.g. a control character in a segment) get the JSON 404 too.
        return _error(404, "not_found", "no such route")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", proxy, methods=methods)], lifespan=lifespan,
                     exception_handlers={404: not_found})


def main() -> None:
    """`python -m local.gateway --port 8080 --upstreams '{"create_user": "http://127.0.0.1:9001", ...}'`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--upstreams", required=True, help="JSON object: function name -> base URL")
    args = parser.parse_args()
    uvicorn.run(build_app(json.loads(args.upstreams)), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
