"""Bearer tokens: HS256 JWTs in the Supabase shape (role in app_metadata.role, aud 'authenticated').

Tokens our own sign-in issues also carry `iss` = `SESSION_ISSUER`, a `jti` and an `iat` (the database's clock,
whole seconds): those are sessions, which a sign-out, a revocation, a role change, a disable or a password set
ends (shared/core/sessions.py). Other tokens signed with the same secret (`invoke token`, the scheduler, an
external identity provider's) carry no such `iss` and are checked as before: signature, audience, expiry, role.
Clock leeway: an `iat` up to `LEEWAY_S` in the future is accepted (the database's clock stamps it, an instance's
clock checks it); `exp` is checked without leeway.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

from shared.core import oidc_keys
from shared.core.errors import Forbidden, Unauthorized
from shared.core.settings import Settings

ALGORITHM = "HS256"
SESSION_ISSUER = "provisioner"  # `iss` of the tokens POST /api/auth/sign-in issues
LEEWAY_S = 5  # an `iat` this far in the future is accepted (clock skew between the database and an instance)
MAX_SESSION_S = 86_400  # the longest ACCESS_TOKEN_TTL_S allows: a session token claiming more is refused


class Role(StrEnum):
    """Who may do what: sales managers create users; admins also run the system; viewers read everything an
    admin reads and change nothing; the scheduler (a Google service account, never a role a user token can
    claim) may only fire scheduled functions."""

    ADMIN = "admin"
    SALES_MANAGER = "sales_manager"
    VIEWER = "viewer"
    SCHEDULER = "scheduler"
    # An account made through POST /api/users: it may sign in, but its token carries no staff role, so every
    # staff route answers it 403 (the role is not in USER_ROLES); only POST /api/auth/sign-out accepts it.
    MEMBER = "member"


USER_ROLES = (Role.ADMIN, Role.SALES_MANAGER, Role.VIEWER)
# Roles a bearer token may carry: the staff roles and `member` (which only POST /api/auth/sign-out accepts).
TOKEN_ROLES = frozenset(r.value for r in (*USER_ROLES, Role.MEMBER))


@dataclass(frozen=True, slots=True)
class Session:
    """What a token of our own sign-in says about itself: whose, when issued, which one, until when."""

    account_id: str
    issued_at: int
    token_id: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller (`session`: set for a token of our own sign-in, None for any other)."""

    subject: str
    role: Role
    session: Session | None = None


class VerifiedTokens:
    """Tokens verified before, until their own `exp`: an LRU of at most `size` entries, keyed by a SHA-256 of
    the signing secret and the token (never the token itself), so memory stays bounded whatever callers send.

    functools.lru_cache cannot expire an entry by its own time, hence this small OrderedDict.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()  # functions-framework may serve sync code in threads too

    @staticmethod
    def key(secret: str, token: str) -> bytes:
        """The cache key: a hash of secret and token."""
        return hashlib.sha256(f"{len(secret)}:{secret}:{token}".encode()).digest()

    def get(self, key: bytes, now: float) -> Principal | None:
        """The remembered principal, unless absent or expired (an expired entry is dropped)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= now:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: bytes, expires: float, principal: Principal) -> None:
        """Remember; the least recently used entry goes when full."""
        with self._lock:
            self._entries[key] = (expires, principal)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


VERIFIED = VerifiedTokens(4096)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer` header (scheme in any case, surrounding spaces ignored)."""
    if not authorization:
        raise Unauthorized("missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def authenticate(authorization: str | None, settings: Settings) -> Principal:
    """Verify an `Authorization: Bearer` header; 401 for anything but a valid, unexpired token.

    A frontend sends the same token with every request: a token verified before is remembered (per instance,
    see `VerifiedTokens`) until its own `exp`, which saves the HMAC and claim checks (13% of the create
    path's CPU under load). Anything not remembered is verified in full.
    """
    token = bearer_token(authorization)
    key = VerifiedTokens.key(settings.auth_jwt_secret.get_secret_value(), token)
    cached = VERIFIED.get(key, time.time())
    if cached is not None:
        return cached
    principal, expires = _verify(token, settings)
    if expires is not None:
        VERIFIED.put(key, expires, principal)
    return principal


def _verify(token: str, settings: Settings) -> tuple[Principal, float | None]:
    """(principal, expiry to remember it until; None: do not remember)."""
    if settings.scheduler_service_account and _algorithm(token) == "RS256":
        return _authenticate_scheduler(token, settings), None
    secret = settings.auth_jwt_secret.get_secret_value()
    if not secret:  # production without AUTH_JWT_SECRET: an empty HMAC key would let anyone sign a token
        raise Unauthorized("this service accepts no bearer token here", headers={"WWW-Authenticate": "Bearer"})
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            options={"require": ["exp", "aud", "sub"], "verify_iat": False},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the token has expired", headers={"WWW-Authenticate": "Bearer"}) from None
    except jwt.PyJWTError:
        raise Unauthorized("the token is not valid", headers={"WWW-Authenticate": "Bearer"}) from None
    iat = claims.get("iat")
    if iat is not None and (not isinstance(iat, int | float) or iat > time.time() + LEEWAY_S):
        raise Unauthorized("the token is not valid yet", headers={"WWW-Authenticate": "Bearer"})
    app_metadata = claims.get("app_metadata")
    role = app_metadata.get("role") if isinstance(app_metadata, dict) else None
    if role not in TOKEN_ROLES:
        raise Forbidden("the token carries no role that may use this service")
    session = _session(claims) if claims.get("iss") == SESSION_ISSUER else None
    return Principal(subject=str(claims["sub"])[:200], role=Role(role), session=session), float(claims["exp"])


def _session(claims: dict[str, Any]) -> Session:
    """The session of a token that claims our issuer: every session claim present and sane, else 401."""
    jti, iat, exp, sub = claims.get("jti"), claims.get("iat"), claims["exp"], str(claims["sub"])
    try:
        account_id = str(uuid.UUID(sub))
    except ValueError:
        account_id = ""
    if (not isinstance(jti, str) or not 0 < len(jti) <= 100 or not isinstance(iat, int) or not isinstance(exp, int)
            or not account_id or exp - iat > MAX_SESSION_S):
        raise Unauthorized("the token is not valid", headers={"WWW-Authenticate": "Bearer"})
    return Session(account_id=account_id, issued_at=iat, token_id=jti, expires_at=exp)


def _algorithm(token: str) -> str:
    try:
        return str(jwt.get_unverified_header(token).get("alg", ""))
    except jwt.PyJWTError:
        return ""


def _authenticate_scheduler(token: str, settings: Settings) -> Principal:
    """A Google-signed OIDC ID token of the configured scheduler service account (RS256, Google's keys).

    Cloud Run's IAM checks the token before the request arrives; here it is checked again in full: signature,
    issuer, expiry, audience (`OIDC_AUDIENCE`, the function's URL: no audience configured, no token accepted)
    and the account's verified email.
    """
    if not settings.oidc_audience:
        raise Unauthorized("no OIDC audience is configured for scheduled calls", headers={"WWW-Authenticate": "Bearer"})
    try:
        key = oidc_keys.signing_key(settings.oidc_jwks_url, token)  # from memory: shared/core/oidc_keys.py
        claims = jwt.decode(token, key, algorithms=["RS256"], issuer=list(settings.oidc_issuers),
                            audience=settings.oidc_audience, options={"require": ["exp", "iss", "aud", "email"]})
    except jwt.PyJWTError:
        raise Unauthorized("the token is not valid", headers={"WWW-Authenticate": "Bearer"}) from None
    if claims.get("email") != settings.scheduler_service_account or claims.get("email_verified") is not True:
        raise Forbidden("this service account may not call this service")
    return Principal(subject=str(claims["email"]), role=Role.SCHEDULER)


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
    secret = settings.auth_jwt_secret.get_secret_value()
    if not secret:
        raise RuntimeError("AUTH_JWT_SECRET is not set: no token can be signed")
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def issue_session_token(settings: Settings, *, role: Role, account_id: str, issued_at: int, ttl_s: int) -> str:
    """A token of our own sign-in: `iss` SESSION_ISSUER, a fresh `jti`, `iat` as given (the database's clock)."""
    return issue_token(settings, role=role, subject=account_id, extra={
        "iss": SESSION_ISSUER, "jti": uuid.uuid4().hex, "iat": issued_at, "exp": issued_at + ttl_s})
