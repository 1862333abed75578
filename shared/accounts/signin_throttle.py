"""Sign-in throttle that stops the attacker, not the owner: counters per (account, client), per client and per
account in a window of `SIGN_IN_WINDOW_S` (15 min), shared by every instance through Redis.

- per (account, client): more than `SIGN_IN_MAX_PER_ACCOUNT_CLIENT` (5) attempts -> that client gets 429 for
  that account; the owner signing in from another client is not affected;
- per client: more than `SIGN_IN_MAX_PER_ADDRESS` (20) attempts, whatever the accounts -> 429 for that client;
- per account: never refused. Reaching `SIGN_IN_ACCOUNT_ALERT_AT` (100) attempts, and every further 100, is an
  attack signal: a WARNING `sign_in_attack` health event, which the watchdog turns into the `sign_in_attack`
  alert (a person decides: disable the account, block addresses at the front). Locking the account instead
  would let anyone lock a known admin out.

The client is the X-Forwarded-For entry our own proxy wrote (`client_address`, TRUSTED_PROXY_HOPS). An attempt
is counted *before* the password is checked (one Lua script, one round trip, all three counters), so parallel
guesses cannot slip past a limit; a successful sign-in then removes its (account, client) counter and gives
back its count to the client and the account. Keys are HMAC-SHA256 digests (keyed with the JWT secret): no email
or IP address is ever in Redis.

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

# For each key: INCR, and start its window on the first attempt (or when a key lost its expiry).
_COUNT = """
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  local ttl = redis.call('PTTL', key)
  if n == 1 or ttl < 0 then redis.call('PEXPIRE', key, ARGV[1]); ttl = tonumber(ARGV[1]) end
  out[#out + 1] = n
  out[#out + 1] = ttl
end
return out
"""

_GIVE_BACK = """
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do
  local n = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n > 0 then redis.call('DECR', KEYS[i]) end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One counted sign-in attempt: its keys, how long to wait when refused (0: allowed), and the account's count
    (an attack signal at the ceiling and every multiple of it)."""

    keys: tuple[str, str, str]  # (account, client), client, account
    retry_after_s: int = 0
    scope: str = ""  # which limit refused it: account_client or client
    first_refusal: bool = False  # the attempt that crossed the limit (one event per lock-out)
    account_attempts: int = 0
    attack: bool = False  # the account's count reached the ceiling (or a further multiple of it) just now
    counted: bool = True


_unavailable = False  # per instance: only transitions leave events


def _digest(deps: Deps, kind: str, value: str) -> str:
    secret = deps.settings.auth_jwt_secret.get_secret_value().encode()
    mac = hmac.new(secret, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{deps.settings.queue_prefix}:sign-in:{kind}:{mac}"


async def count_attempt(deps: Deps, email_normalized: str, client_address: str) -> Attempt:
    """Count one attempt against every counter; `retry_after_s > 0` means refuse it (429)."""
    settings = deps.settings
    client = client_address or "unknown"
    keys = (_digest(deps, "account-client", f"{email_normalized}\n{client}"), _digest(deps, "client", client),
            _digest(deps, "account", email_normalized))
    try:
        if deps.breaker.is_open:
            raise ConnectionError("the Redis breaker is open")
        script = deps.queue.client.register_script(_COUNT)
        counts = [int(v) for v in await script(keys=list(keys), args=[settings.sign_in_window_s * 1000])]
    except Exception as exc:
        await _mark(deps, available=False, error=type(exc).__name__)
        return Attempt(keys, counted=False)
    await _mark(deps, available=True)
    (pair, pair_ttl), (by_client, client_ttl), (account, _) = zip(counts[::2], counts[1::2], strict=True)
    ceiling = settings.sign_in_account_alert_at
    attack = account >= ceiling and (account - ceiling) % ceiling == 0
    refusals: list[tuple[str, int, int, int]] = []
    if pair > settings.sign_in_max_per_account_client:
        refusals.append(("account_client", pair_ttl, pair, settings.sign_in_max_per_account_client))
    if by_client > settings.sign_in_max_per_address:
        refusals.append(("client", client_ttl, by_client, settings.sign_in_max_per_address))
    if not refusals:
        return Attempt(keys, account_attempts=account, attack=attack)
    scope, ttl_ms, count, limit = max(refusals, key=lambda r: r[1])
    return Attempt(keys, retry_after_s=max(1, -(-ttl_ms // 1000)), scope=scope, first_refusal=count == limit + 1,
                   account_attempts=account, attack=attack)


async def forgive(deps: Deps, attempt: Attempt) -> None:
    """After a successful sign-in: the (account, client) counter goes; the client and the account get this
    attempt back (an attacker's failures on the account stay counted)."""
    if not attempt.counted:
        return
    try:
        script = deps.queue.client.register_script(_GIVE_BACK)
        await script(keys=list(attempt.keys), args=[])
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
