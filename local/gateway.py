"""The local gateway: one address (127.0.0.1:8080) in front of every function, routed by the manifest.

In the cloud a load balancer's URL map does this; locally it is a small reverse proxy. Unknown paths get the
contract's JSON 404, a known path with another method a 405. Like a well-behaved proxy it streams request
bodies to the function with the functions' byte cap (413 past it, checked on the declared length and again
while streaming, so no body is held in memory), replaces any incoming `X-Forwarded-For` with the caller's
address, and drops hop-by-hop headers, including those a `Connection` header lists. `/healthz` answers 503
until whoever started the system says every part is ready (`--ready-file` exists), then the healthz function.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
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
# The caller's own claims about the forwarding path are never passed on: the gateway states it.
FORWARDING = {"x-forwarded-for", "forwarded", "x-real-ip"}
DEFAULT_MAX_BODY_BYTES = 16 * 1024  # the functions' MAX_BODY_BYTES default


class BodyTooLarge(Exception):
    """The streamed body passed the cap."""


def _drop_hop_by_hop(raw: Iterable[tuple[bytes, bytes]],
                     also: frozenset[str] | set[str] = frozenset()) -> list[tuple[bytes, bytes]]:
    """The headers minus the hop-by-hop ones: the fixed list and every name the `Connection` header lists."""
    listed = {token.strip().lower() for k, v in raw if k.decode("latin-1").lower() == "connection"
              for token in v.decode("latin-1").split(",") if token.strip()}
    dropped = HOP_BY_HOP | listed | also
    return [(k, v) for k, v in raw if k.decode("latin-1").lower() not in dropped]


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length", "")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 20 else None


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": None}}, status_code=status, headers=headers
    )


def build_app(upstreams: dict[str, str], specs: dict[str, FunctionSpec] | None = None, *,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, body_limits: dict[str, int] | None = None,
              ready: Callable[[], bool] = lambda: True) -> Starlette:
    """A Starlette app proxying each manifest route to `upstreams[function name]` (a base URL).

    `body_limits` overrides the byte cap per function; `ready()` gates `/healthz` (503 until it is true).
    """
    specs = specs or load_manifest()
    limits_by_function = body_limits or {}
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
        if request.url.path.rstrip("/") == "/healthz" and not ready():
            return _error(503, "starting", "the system is starting: not every part is ready yet", {"Retry-After": "1"})
        base = upstreams.get(spec.name)
        if base is None:
            return _error(503, "function_unavailable", f"{spec.name} is not running", {"Retry-After": "5"})
        cap = limits_by_function.get(spec.name, max_body_bytes)
        declared = _declared_length(request)
        if declared is not None and declared > cap:
            return _error(413, "payload_too_large", f"the body is larger than {cap} bytes")
        # Raw bytes both ways: a header value need not be ASCII (the function decides what is valid).
        headers = _drop_hop_by_hop(request.headers.raw, FORWARDING)
        headers.append((b"x-forwarded-for", (request.client.host if request.client else "").encode()))
        has_body = declared is not None or "transfer-encoding" in request.headers

        async def body() -> AsyncIterator[bytes]:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise BodyTooLarge
                yield chunk

        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            try:
                upstream = await state["client"].request(request.method, url, headers=headers,
                                                         content=body() if has_body else None)
            except httpx.RemoteProtocolError:
                # A kept-alive connection the function closed (its keep-alive timeout) just as this request went
                # out: the function saw nothing. A request without a body that cannot change anything (GET,
                # HEAD) goes once more, on a new connection, as a browser would do; anything else is answered.
                if has_body or request.method not in ("GET", "HEAD"):
                    raise
                upstream = await state["client"].request(request.method, url, headers=headers)
        except BodyTooLarge:
            return _error(413, "payload_too_large", f"the body is larger than {cap} bytes")
        except httpx.HTTPError as exc:
            if isinstance(exc.__cause__ or exc.__context__, BodyTooLarge):
                return _error(413, "payload_too_large", f"the body is larger than {cap} bytes")
            return _error(
                503, "function_unavailable", f"{spec.name} did not answer ({type(exc).__name__})", {"Retry-After": "5"}
            )
        response = Response(upstream.content, status_code=upstream.status_code)
        response.raw_headers = _drop_hop_by_hop(upstream.headers.raw, {"date", "server"})
        response.raw_headers.append((b"content-length", str(len(upstream.content)).encode()))
        return response

    async def not_found(request: Request, exc: Exception) -> Response:
        # Paths Starlette itself cannot route (e.g. a control character in a segment) get the JSON 404 too.
        return _error(404, "not_found", "no such route")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", proxy, methods=methods)], lifespan=lifespan,
                     exception_handlers={404: not_found})


def server_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    """How the gateway is served. proxy_headers off: uvicorn would otherwise believe an `X-Forwarded-For` sent
    from 127.0.0.1 and take the caller's claim for its address."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning", proxy_headers=False)


def main() -> None:
    """`python -m local.gateway --port 8080 --upstreams '{"create_user": "http://127.0.0.1:9001", ...}'`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--upstreams", required=True, help="JSON object: function name -> base URL")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="request body cap (the functions' MAX_BODY_BYTES)")
    parser.add_argument("--body-limits", default="{}", help="JSON object: function name -> its own body cap")
    parser.add_argument("--ready-file", default="", help="/healthz is 503 until this file exists")
    args = parser.parse_args()
    ready_file = Path(args.ready_file) if args.ready_file else None
    app = build_app(json.loads(args.upstreams), max_body_bytes=args.max_body_bytes,
                    body_limits=json.loads(args.body_limits),
                    ready=(lambda: ready_file.exists()) if ready_file else (lambda: True))
    uvicorn.Server(server_config(app, args.host, args.port)).run()


if __name__ == "__main__":
    main()
