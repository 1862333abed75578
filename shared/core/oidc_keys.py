"""Google's OIDC signing keys (a JWKS URL) for the scheduler's tokens: fetched off the event loop, cached, and an
unknown key id answered from memory.

A token names its key (`kid`). A kid this instance does not know makes one fetch of the JWKS, in a worker thread
(`asyncio.to_thread`), one at a time per URL; after any fetch, a kid still unknown is refused from memory for
`REFETCH_AFTER_S` seconds (the cached negative answer), so a flood of tokens with made-up kids costs at most one
fetch per that many seconds and never holds the event loop. Known keys are kept `LIFESPAN_S`; Google publishes a
new key well before it signs with it.

The request path calls `await prepare(...)` (shared/http.py) before the synchronous check in shared/core/auth.py,
which then only reads `signing_key(...)` from memory. Code with no running event loop (a CLI, a unit test) may
fetch synchronously through `signing_key`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import jwt

log = logging.getLogger(__name__)

LIFESPAN_S = 3600.0
REFETCH_AFTER_S = 30.0  # a kid not found is not fetched for again within this
FETCH_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 256 * 1024


@dataclass
class KeySet:
    """The keys of one JWKS URL and when they were last fetched."""

    url: str
    keys: dict[str, Any] = field(default_factory=dict)  # kid -> public key
    fetched_at: float = float("-inf")  # monotonic; -inf: never
    fetches: int = 0
    thread_lock: threading.Lock = field(default_factory=threading.Lock)
    loop_locks: dict[int, asyncio.Lock] = field(default_factory=dict)

    def known(self, kid: str, now: float) -> Any | None:
        """The key of `kid` while the set is fresh, else None."""
        if now - self.fetched_at > LIFESPAN_S:
            return None
        return self.keys.get(kid)

    def may_fetch(self, kid: str, now: float) -> bool:
        """Whether `kid` is worth a fetch: not known, and no fetch in the last REFETCH_AFTER_S seconds (a fresh
        set without it is the cached negative answer)."""
        return self.known(kid, now) is None and now - self.fetched_at >= REFETCH_AFTER_S

    def fetch(self) -> None:
        """GET the JWKS (blocking: run it in a thread from async code) and replace the keys; a failure keeps the
        previous keys and still counts as a fetch (no retry storm)."""
        with self.thread_lock:
            self.fetches += 1
            try:
                if not self.url.startswith(("https://", "http://")):  # never file:// or a custom scheme
                    raise ValueError("the JWKS URL is not an http(s) URL")
                request = urllib.request.Request(self.url, headers={"Accept": "application/json"})  # noqa: S310
                # nosec B310: the scheme is checked on the line above.
                with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as answer:  # noqa: S310  # nosec B310
                    document = json.loads(answer.read(MAX_BODY_BYTES))
                keys = {str(item["kid"]): jwt.PyJWK(item).key for item in document.get("keys", [])
                        if isinstance(item, dict) and item.get("kid") and item.get("kty") == "RSA"}
            except (OSError, ValueError, KeyError, TypeError, jwt.PyJWTError) as err:
                log.warning("the OIDC keys could not be fetched from %s (%s): scheduler tokens signed with an "
                            "unknown key are refused until the next fetch", self.url, type(err).__name__)
                self.fetched_at = time.monotonic()
                return
            self.keys = keys
            self.fetched_at = time.monotonic()

    def lock(self) -> asyncio.Lock:
        """One fetch at a time per URL in this event loop."""
        loop = id(asyncio.get_running_loop())
        return self.loop_locks.setdefault(loop, asyncio.Lock())


_SETS: dict[str, KeySet] = {}
_SETS_LOCK = threading.Lock()


def key_set(url: str) -> KeySet:
    """The (process-wide) key set of a JWKS URL."""
    with _SETS_LOCK:
        return _SETS.setdefault(url, KeySet(url))


def kid_of(token: str) -> str:
    """The `kid` of a token's header ('' when absent or unreadable)."""
    try:
        return str(jwt.get_unverified_header(token).get("kid") or "")
    except jwt.PyJWTError:
        return ""


async def prepare(url: str, token: str) -> None:
    """Make sure the key a token names is in memory if it can be, without blocking the event loop: at most one
    fetch at a time, in a thread, and none while the negative answer is fresh."""
    kid = kid_of(token)
    keys = key_set(url)
    if not kid or not keys.may_fetch(kid, time.monotonic()):
        return
    async with keys.lock():
        if keys.may_fetch(kid, time.monotonic()):  # another request may have fetched while this one waited
            await asyncio.to_thread(keys.fetch)


def signing_key(url: str, token: str) -> Any:
    """The public key a token names, from memory; raises `jwt.InvalidKeyError` when unknown.

    Inside a running event loop it never fetches (`prepare` did); without one it fetches synchronously, under the
    same negative-answer rule.
    """
    kid = kid_of(token)
    keys = key_set(url)
    now = time.monotonic()
    key = keys.known(kid, now)
    if key is None and kid and keys.may_fetch(kid, now):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            keys.fetch()
            key = keys.known(kid, time.monotonic())
    if key is None:
        raise jwt.InvalidKeyError("the token's signing key is not one of the issuer's")
    return key
