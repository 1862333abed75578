"""Sign-in throttle: at most 5 attempts per account and 20 per client address in 15 minutes, across instances.

Counters live in Redis (one key per account and per address, a fixed window that starts at the first counted
attempt and lasts `SIGN_IN_WINDOW_S`). An attempt is counted *before* the password is checked, so parallel
guesses cannot slip past the limit; a successful sign-in then removes the account's counter and gives back its
address's count. Keys are HMAC-SHA256 digests (keyed with the JWT secret) of the normalised address and of the
client address: neither an email address nor an IP address is ever in Redis.

When Redis cannot be reached the throttle fails **open**: sign-in keeps working (the on-call admin must reach
the System Health panel precisely when Redis is down) and a WARNING `sign_in_throttle_unavailable` event says
so, once per outage per instance, with an INFO event when it works again. Guessing stays slow without it:
every attempt costs an Argon2id verification (150 ms, at most 4 at once per instance).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from shared.bootstrap import Deps
from shared.core.health import Level, record_detached

log = logging.getLogger(__name__)

_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
"""

_GIVE_BACK = """
redis.call('DEL', KEYS[1])
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if n > 0 then redis.call('DECR', KEYS[2]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One counted sign-in attempt: its keys, and how long to wait when refused (0: allowed)."""

    account_key: str
    address_key: str
    retry_after_s: int = 0
    scope: str = ""  # which limit refused it: account or address
    first_refusal: bool = False  # the attempt that crossed the limit (one event per lock-out)
    counted: bool = True


_unavailable = False  # per instance: only transitions leave events


def _digest(deps: Deps, kind: str, value: str) -> str:
    secret = deps.settings.auth_jwt_secret.get_secret_value().encode()
    mac = hmac.new(secret, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{deps.settings.queue_prefix}:sign-in:{kind}:{mac}"


async def count_attempt(deps: Deps, email_normalized: str, client_address: str) -> Attempt:
    """Count one attempt against both limits; `retry_after_s > 0` means refuse it (429)."""
    settings = deps.settings
    account_key = _digest(deps, "account", email_normalized)
    address_key = _digest(deps, "address", client_address or "unknown")
    window_ms = settings.sign_in_window_s * 1000
    try:
        if deps.breaker.is_open:
            raise ConnectionError("the Redis breaker is open")
        script = deps.queue.client.register_script(_COUNT)
        account = await script(keys=[account_key], args=[window_ms])
        address = await script(keys=[address_key], args=[window_ms])
    except Exception as exc:
        await _mark(deps, available=False, error=type(exc).__name__)
        return Attempt(account_key, address_key, counted=False)
    await _mark(deps, available=True)
    refusals: list[tuple[str, int, int, int]] = []
    if int(account[0]) > settings.sign_in_max_per_account:
        refusals.append(("account", int(account[1]), int(account[0]), settings.sign_in_max_per_account))
    if int(address[0]) > settings.sign_in_max_per_address:
        refusals.append(("address", int(address[1]), int(address[0]), settings.sign_in_max_per_address))
    if not refusals:
        return Attempt(account_key, address_key)
    scope, ttl_ms, count, limit = max(refusals, key=lambda r: r[1])
    return Attempt(account_key, address_key, retry_after_s=max(1, -(-ttl_ms // 1000)), scope=scope,
                   first_refusal=count == limit + 1)


async def forgive(deps: Deps, attempt: Attempt) -> None:
    """After a successful sign-in: the account's counter goes, the address's count is given back."""
    if not attempt.counted:
        return
    try:
        script = deps.queue.client.register_script(_GIVE_BACK)
        await script(keys=[attempt.account_key, attempt.address_key], args=[])
    except Exception as exc:
        # The counter then expires by itself with its window; the next attempt reports the outage if it lasts.
        log.warning("sign-in throttle: could not reset a counter (%s)", type(exc).__name__)


async def _mark(deps: Deps, *, available: bool, error: str = "") -> None:
    global _unavailable
    if available == (not _unavailable):
        return
    _unavailable = not available
    meta: dict[str, Any] = {"instance": deps.source}
    if available:
        await record_detached(deps.pool, Level.INFO, "sign_in_throttle_restored",
                              "sign-in throttle works again (Redis reachable)", meta, source=deps.source)
    else:
        await record_detached(deps.pool, Level.WARNING, "sign_in_throttle_unavailable",
                              f"Redis unreachable ({error}): sign-in is not throttled on this instance "
                              "(fails open)", {**meta, "error": error}, source=deps.source)
