"""Validated commands and the shapes the functions answer with."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from shared.core.identity import normalize_email
from shared.creation.email_syntax import enable_domain_cache

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class TrafficMode(StrEnum):
    """The kill switch: queue the slow part, or do it inside the request."""

    ASYNC_QUEUE = "async_queue"
    SYNC_DIRECT = "sync_direct"


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: 60 or 60.0, never "60" or true (pydantic's lax mode would take those)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


def _no_control_chars(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters or line breaks")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


@functools.cache
def _cache_domain_checks() -> bool:
    """Once per process: email_validator's domain check (two thirds of its cost, a pure function of the domain)
    is cached; the sales team's requests come from few domains (shared/creation/email_syntax.py)."""
    return enable_domain_cache()


def _valid_email(value: str) -> str:
    # Imported on first use: 20 ms of a cold start for the functions that never read an address.
    from email_validator import EmailNotValidError, validate_email

    _cache_domain_checks()
    _no_control_chars(value)
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=True, strict=True)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return checked.normalized


PlainText = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_no_control_chars)]


class CreateUserCommand(BaseModel):
    """What a sales manager sends to create a user."""

    model_config = ConfigDict(extra="forbid", str_max_length=320)

    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=254), AfterValidator(_valid_email)]
    full_name: Annotated[PlainText, Field(min_length=1, max_length=200)]
    phone: Annotated[PlainText, Field(pattern=r"^\+?[0-9][0-9 ().-]{3,30}$")] | None = None
    product: Annotated[PlainText, Field(min_length=1, max_length=100)] | None = None

    @property
    def email_normalized(self) -> str:
        """The uniqueness key of the address."""
        return normalize_email(self.email)

    def body_hash(self) -> str:
        """Fingerprint of the request body, to tell a replay from a reused Idempotency-Key."""
        canonical = json.dumps(
            {"email": self.email_normalized, "full_name": self.full_name, "phone": self.phone,
             "product": self.product},
            sort_keys=True, ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


class SetModeCommand(BaseModel):
    """An admin's flip of the kill switch."""

    model_config = ConfigDict(extra="forbid")

    mode: TrafficMode
    reason: Annotated[PlainText, Field(min_length=3, max_length=500)]
    expected_version: Annotated[int, Field(ge=1)] | None = None
    # The switch returns to the previous mode by itself after this long.
    revert_after_s: Annotated[JsonInt, Field(ge=60, le=86_400)] | None = None


REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


def is_request_id(value: str) -> bool:
    """Whether `value` can be a request id at all (anything else is answered 404 without a query)."""
    return REQUEST_ID.fullmatch(value) is not None


class AuditQuery(BaseModel):
    """Paging of the audit trail."""

    model_config = ConfigDict(extra="forbid")

    limit: Annotated[int, Field(ge=1, le=500)] = 50
    after_id: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = None  # older rows: id < after_id


def validation_details(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic errors as the contract's `details`: the field and why, never the rejected value."""
    details = []
    for err in errors:
        loc = ".".join(str(part) for part in err.get("loc", ())) or "body"
        details.append({"field": loc, "message": err.get("msg", "invalid"), "type": err.get("type", "")})
    return details
