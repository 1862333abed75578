"""Domain errors. Each carries the HTTP status and the snake_case code of the contract's error body."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error a caller may see; never carries PII or a stack trace."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        """The contract's error envelope."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class MisconfiguredInstance(DomainError):
    """The instance's settings are invalid: a deploy error, never the caller's; the log names the variables."""

    status, code = 503, "misconfigured"


class InvalidInput(DomainError):
    status, code = 422, "invalid_input"


class InvalidFile(InvalidInput):
    """A bulk upload that cannot be read as a whole (empty, no header, binary, not UTF-8, bad JSON)."""

    code = "invalid_file"


class TooManyRows(InvalidInput):
    code = "too_many_rows"


class UnsupportedMediaType(DomainError):
    status, code = 415, "unsupported_media_type"


class IdempotencyKeyReused(DomainError):
    status, code = 422, "idempotency_key_reused"


class Unauthorized(DomainError):
    status, code = 401, "unauthorized"


class Forbidden(DomainError):
    status, code = 403, "forbidden"


class NotFound(DomainError):
    status, code = 404, "not_found"


class MethodNotAllowed(DomainError):
    status, code = 405, "method_not_allowed"


class UserExists(DomainError):
    status, code = 409, "user_exists"


class RequestInProgress(DomainError):
    status, code = 409, "request_in_progress"


class StaleVersion(DomainError):
    status, code = 409, "stale_version"


class PayloadTooLarge(DomainError):
    status, code = 413, "payload_too_large"


class RateLimited(DomainError):
    """Too many requests from one caller; `Retry-After` says in whole seconds when one more fits."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, **kw: Any) -> None:
        kw.setdefault("headers", {"Retry-After": str(max(1, retry_after_s))})
        kw.setdefault("details", {"retry_after_s": max(1, retry_after_s)})
        super().__init__(message, **kw)


class DatabaseUnavailable(DomainError):
    status, code = 503, "database_unavailable"

    def __init__(self, message: str = "the database is unreachable; nothing was written", **kw: Any) -> None:
        kw.setdefault("headers", {"Retry-After": "5"})
        super().__init__(message, **kw)


class CreationFailed(DomainError):
    """The creation of a user failed in the request (sync path) for a reason other than the above."""

    status, code = 503, "creation_failed"

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("headers", {"Retry-After": "5"})
        super().__init__(message, **kw)
