"""HTTP glue shared by the functions: auth, JSON bodies with a size limit, and the error envelope."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.auth import Principal, Role, authenticate, require_role
from shared.bootstrap import Deps, get_deps
from shared.errors import DomainError, InvalidInput, MethodNotAllowed, PayloadTooLarge
from shared.models import validation_details

log = logging.getLogger(__name__)

Handler = Callable[[Request, Deps, Principal], Awaitable[Response | dict[str, Any]]]


def error_response(err: DomainError) -> JSONResponse:
    """The contract's JSON error body with the error's status and headers."""
    return JSONResponse(err.to_body(), status_code=err.status, headers=err.headers)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body; 413 past `max_bytes` (checked before and while reading: never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
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
    """The JSON body; 413 past `max_bytes` (checked before and while reading), 422 when not JSON."""
    raw = await read_body(request, max_bytes)
    try:
        return json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("the body is not valid JSON", details=[{"field": "body", "message": "invalid JSON"}]) \
            from None


def json_object(payload: Any) -> dict[str, Any]:
    """422 unless the body is a JSON object."""
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object", details=[{"field": "body", "message": "not an object"}])
    return payload


Endpoint = Callable[[Request], Awaitable[Response]]


def endpoint(*, methods: tuple[str, ...], roles: tuple[Role, ...]) -> Callable[[Handler], Endpoint]:
    """Wrap a handler: method check, bearer auth and role, deps, and every error as the JSON envelope.

    An unexpected exception is logged with its stack trace and answered as a plain 500 JSON body.
    """

    def decorate(handler: Handler) -> Endpoint:
        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            try:
                if request.method not in methods:
                    raise MethodNotAllowed(f"use {' or '.join(methods)}",
                                           headers={"Allow": ", ".join(methods)})
                deps = await get_deps()
                principal = authenticate(request.headers.get("authorization"), deps.settings)
                require_role(principal, *roles)
                result = await handler(request, deps, principal)
            except DomainError as err:
                return error_response(err)
            except ValidationError as err:
                return error_response(InvalidInput("the request is not valid",
                                                   details=validation_details(err.errors())))
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                return JSONResponse({"error": {"code": "internal_error", "message": "internal error",
                                               "details": None}}, status_code=500)
            return result if isinstance(result, Response) else JSONResponse(result)

        return wrapped

    return decorate
