"""Passwords: Argon2id hashes (argon2-cffi, RFC 9106 parameters) and the strength rule.

Hashing costs about 150 ms of CPU and 64 MiB of memory (RFC 9106's second recommendation, the "low memory"
profile: t=3, m=64 MiB, p=4). It runs in a worker thread so the event loop keeps serving, and at most
`MAX_CONCURRENT_HASHES` run at once per instance, so a burst of sign-ins cannot take 80 x 64 MiB.

Strength: 12 to 128 characters, not the account's email address, and not guessable by zxcvbn (Dropbox's
estimator, maintained on PyPI as `zxcvbn`; it ships the common-password lists). A score below 3 ("safely
unguessable: moderate protection from offline slow-hash scenario") is refused with zxcvbn's own feedback.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import RFC_9106_LOW_MEMORY

from shared.core.identity import normalize_email

MIN_LENGTH = 12
MAX_LENGTH = 128
MIN_SCORE = 3
# zxcvbn's work grows with the length (0.9 s for 128 random characters, 0.05 s at its default bound of 72):
# it judges the first 72 characters; a password whose first 72 are strong is strong.
STRENGTH_PREFIX = 72
MAX_CONCURRENT_HASHES = 4


@functools.cache
def hasher() -> PasswordHasher:
    """The process's Argon2id hasher (RFC 9106 low-memory profile)."""
    return PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)


_slots: asyncio.Semaphore | None = None


def _semaphore() -> asyncio.Semaphore:
    global _slots
    if _slots is None:
        _slots = asyncio.Semaphore(MAX_CONCURRENT_HASHES)
    return _slots


async def hash_password(password: str) -> str:
    """The PHC string of `password` (salted; computed in a thread)."""
    async with _semaphore():
        return await asyncio.to_thread(hasher().hash, password)


# A hash of a random password nobody kept, made once with the profile above: verifying against it costs what a
# real verification costs, without hashing at run time (one Argon2 hash, a quarter of a second, on the first
# unknown-address sign-in of every instance). A match against it is refused anyway (`_verify_sync`).
_FIXED_DUMMY = ("$argon2id$v=19$m=65536,t=3,p=4$y0sMgDJJX9kIT2CZ2L8ajQ"
                "$w8yOKt4xRMv0ZpQDqNY60C3lDoG4S124ZNtSHlexqiQ")


@functools.cache
def _dummy_hash() -> str:
    """The dummy hash, with the parameters real hashes get (a fresh one when the profile has changed, so the
    timing stays equal)."""
    if not hasher().check_needs_rehash(_FIXED_DUMMY):
        return _FIXED_DUMMY
    return hasher().hash(secrets.token_urlsafe(24))


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of checking a password against a stored hash."""

    ok: bool
    needs_rehash: bool = False


def _verify_sync(stored: str | None, password: str) -> Verification:
    # No account, or no password yet: verify against a dummy hash of the same parameters, so the answer
    # takes as long as a real wrong password (no timing oracle for "this address has an account").
    target = stored or _dummy_hash()
    try:
        hasher().verify(target, password)
    except (VerificationError, InvalidHashError):
        return Verification(False)
    if stored is None:
        return Verification(False)
    return Verification(True, hasher().check_needs_rehash(stored))


async def verify_password(stored: str | None, password: str) -> Verification:
    """Check `password` against `stored` (None: no password: always False, in the same time)."""
    async with _semaphore():
        return await asyncio.to_thread(_verify_sync, stored, password)


def weakness(password: str, *, email: str, full_name: str = "") -> dict[str, Any] | None:
    """Why `password` is refused (the contract's 422 detail), or None when it is acceptable."""
    if len(password) < MIN_LENGTH:
        return {"field": "password", "message": f"must be at least {MIN_LENGTH} characters", "type": "too_short"}
    if len(password) > MAX_LENGTH:
        return {"field": "password", "message": f"must be at most {MAX_LENGTH} characters", "type": "too_long"}
    normalized = normalize_email(password)
    email_norm = normalize_email(email)
    if normalized == email_norm or normalized == email_norm.split("@", 1)[0]:
        return {"field": "password", "message": "must not be your email address", "type": "is_email"}
    from zxcvbn import zxcvbn  # 50 ms to import its word lists: only where passwords are set

    inputs = [email, email_norm, *email_norm.split("@", 1), *full_name.split()]
    result = zxcvbn(password[:STRENGTH_PREFIX], user_inputs=inputs, max_length=STRENGTH_PREFIX)
    if int(result["score"]) >= MIN_SCORE:
        return None
    feedback = result.get("feedback") or {}
    hint = " ".join(filter(None, [feedback.get("warning"), *(feedback.get("suggestions") or [])]))
    return {"field": "password", "message": f"too easy to guess{': ' + hint if hint else ''}",
            "type": "too_common"}
