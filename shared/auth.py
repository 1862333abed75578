"""Bearer tokens: HS256 JWTs in the Supabase shape (role in app_metadata.role, aud 'authenticated')."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

from shared.errors import Forbidden, Unauthorized
from shared.settings import Settings

ALGORITHM = "HS256"


class Role(StrEnum):
    """Who may do what: sales managers create users; admins also run the system."""

    ADMIN = "admin"
    SALES_MANAGER = "sales_manager"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    subject: str
    role: Role


def authenticate(authorization: str | None, settings: Settings) -> Principal:
    """Verify an `Authorization: Bearer` header; 401 for anything but a valid, unexpired token."""
    if not authorization:
        raise Unauthorized("missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
    try:
        claims = jwt.decode(
            token.strip(),
            settings.auth_jwt_secret.get_secret_value(),
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            options={"require": ["exp", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the token has expired", headers={"WWW-Authenticate": "Bearer"}) from None
    except jwt.PyJWTError:
        raise Unauthorized("the token is not valid", headers={"WWW-Authenticate": "Bearer"}) from None
    app_metadata = claims.get("app_metadata")
    role = app_metadata.get("role") if isinstance(app_metadata, dict) else None
    try:
        parsed = Role(str(role))
    except ValueError:
        raise Forbidden("the token carries no role that may use this service") from None
    return Principal(subject=str(claims["sub"])[:200], role=parsed)


def require_role(principal: Principal, *allowed: Role) -> None:
    """403 unless the caller has one of the allowed roles."""
    if principal.role not in allowed:
        raise Forbidden(f"this needs the role {' or '.join(r.value for r in allowed)}")


def issue_token(settings: Settings, *, role: Role, subject: str, ttl_s: int = 3600,
                extra: dict[str, Any] | None = None) -> str:
    """Sign a token with the configured secret (for `invoke token`, the scheduler and tests)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl_s,
        "role": "authenticated",
        "app_metadata": {"role": role.value},
        **(extra or {}),
    }
    return jwt.encode(claims, settings.auth_jwt_secret.get_secret_value(), algorithm=ALGORITHM)
