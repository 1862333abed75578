"""HTTP glue shared by the functions: auth, JSON bodies with a size limit, and the error envelope."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.bootstrap import Deps, get_deps
from shared.core import oidc_keys, tracing
from shared.core.auth import Principal, Role, authenticate, require_role
from shared.core.errors import DomainError, InvalidInput, MethodNotAllowed, MisconfiguredInstance, PayloadTooLarge
from shared.core.settings import Settings
from shared.creation.models import validation_details

log = logging.getLogger(__name__)

# On every API answer: browsers keep to https for two years, and nothing (proxy or browser) stores an answer
# that may carry addresses or tokens.
API_HEADERS = {"Strict-Transport-Security": "max-age=63072000; includeSubDomains", "Cache-Control": "no-store"}

Handler = Callable[[Request, Deps, Principal], Awaitable[Response | dict[str, Any]]]


def error_response(err: DomainError) -> JSONResponse:
    """The contract's JSON error body with the error's status and headers."""
    return JSONResponse(err.to_body(), status_code=err.status, headers={**API_HEADERS, **err.headers})


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    # str.isdigit() is true for "²" too: only ASCII digits are a length.
    return int(declared) if declared.isascii() and declared.isdigit() and len(declared) < 20 else None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body; 413 past `max_bytes` (checked before and while reading: never buffered past it)."""
    declared = _declared_length(request)
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int) -> Any:
    """The JSON body; 413 past `max_bytes` (checked before and while reading), 422 when not JSON.

    Every way a body can fail to parse is a 422: invalid UTF-8, bad syntax, nesting deeper than the parser's
    recursion limit, and integers longer than Python's 4,300-digit conversion limit.
    """
    raw = await read_body(request, max_bytes)
    try:
        return json.loads(raw or b"null")
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidInput("the body is not valid JSON", details=[{"field": "body", "message": "invalid JSON"}]) \
            from None


def json_object(payload: Any) -> dict[str, Any]:
    """422 unless the body is a JSON object."""
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object", details=[{"field": "body", "message": "not an object"}])
    return payload


Endpoint = Callable[[Request], Awaitable[Response]]


async def _configured_deps() -> Deps:
    """`get_deps()`, with invalid settings answered 503 (not the request's 422) and named in the log."""
    try:
        return await get_deps()
    except ValidationError as err:
        names = sorted({str(e["loc"][0]) for e in err.errors() if e.get("loc")} or {"settings"})
        log.error("invalid configuration, this instance cannot serve: %s", ", ".join(names))
        raise MisconfiguredInstance("this instance is misconfigured; see its log",
                                    headers={"Retry-After": "30"}) from None


async def _prepare_oidc_key(authorization: str | None, settings: Settings) -> None:
    """A scheduler's RS256 token whose key is not in memory: fetch the JWKS in a thread, never on the event loop
    (shared/core/oidc_keys.py); the check that follows reads the key from memory."""
    if not settings.scheduler_service_account or not authorization:
        return
    token = authorization.strip().partition(" ")[2].strip()
    try:
        algorithm = jwt.get_unverified_header(token).get("alg") if token else None
    except jwt.PyJWTError:
        return  # not a token at all: authenticate() answers 401
    if algorithm == "RS256":
        await oidc_keys.prepare(settings.oidc_jwks_url, token)


# The caller of a public route (`roles=()`: sign-in, set-password), which carries no bearer token.
ANONYMOUS = Principal(subject="anonymous", role=Role.MEMBER)


def endpoint(*, methods: tuple[str, ...], roles: tuple[Role, ...]) -> Callable[[Handler], Endpoint]:
    """Wrap a handler: method check, bearer auth and role (none for `roles=()`: a public route), deps, and
    every error as the JSON envelope.

    An unexpected exception is logged with its stack trace and answered as a plain 500 JSON body.
    """

    def decorate(handler: Handler) -> Endpoint:
        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            try:
                if request.method not in methods:
                    raise MethodNotAllowed(f"use {' or '.join(methods)}",
                                           headers={"Allow": ", ".join(methods)})
                deps = await _configured_deps()
                if roles:
                    await _prepare_oidc_key(request.headers.get("authorization"), deps.settings)
                    principal = authenticate(request.headers.get("authorization"), deps.settings)
                    await deps.sessions.check(principal)  # an ended session: 401 (no round trip, see sessions)
                    require_role(principal, *roles)
                else:
                    principal = ANONYMOUS
                # The server span continues an incoming W3C traceparent (shared/core/tracing.py); without one the
                # span is a root, which is what an empty extracted context gives too (minus the header copy).
                traces = tracing.setup(deps.settings, handler.__name__)
                headers = request.headers
                parent = traces.extract(headers) if "traceparent" in headers else None
                with traces.span(f"{request.method} {handler.__name__}", parent=parent, kind="SERVER",
                                 attributes={"http.request.method": request.method}):
                    result = await handler(request, deps, principal)
            except DomainError as err:
                return error_response(err)
            except ValidationError as err:
                return error_response(InvalidInput("the request is not valid",
                                                   details=validation_details(err.errors())))
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                return JSONResponse({"error": {"code": "internal_error", "message": "internal error",
                                               "details": None}}, status_code=500, headers=API_HEADERS)
            response = result if isinstance(result, Response) else JSONResponse(result)
            for name, value in API_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return wrapped

    return decorate
