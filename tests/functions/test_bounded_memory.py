"""Memory stays bounded whatever unauthenticated or authenticated callers send: panel asset misses are never
remembered, and the verified-token memory is keyed by a hash and holds at most its size (least recently used
goes first)."""

from __future__ import annotations

import tracemalloc
import uuid

import pytest

from shared.core import auth as auth_module
from shared.core.auth import VERIFIED, Role, VerifiedTokens, authenticate, issue_token
from shared.core.errors import Unauthorized
from shared.panel_assets import PANEL_DIR, assets
from tests.conftest import auth


async def test_thousands_of_asset_misses_store_nothing(call):
    served = await call("admin_panel", "GET", "/admin/assets/app.js")
    assert served.status_code == 200
    files = dict(assets())
    assert set(files) == {p.name for p in PANEL_DIR.iterdir() if p.suffix in (".js", ".css", ".html", ".svg")}
    names = [f"{uuid.uuid4().hex}{'x' * 200}.js" for _ in range(2100)]
    for name in names[:600]:  # warm-up: fills the bounded caches of urllib and httpx, allocated once
        assert (await call("admin_panel", "GET", f"/admin/assets/{name}")).status_code == 404
    tracemalloc.start(3)
    try:
        before = tracemalloc.take_snapshot()
        for name in names[600:]:
            assert (await call("admin_panel", "GET", f"/admin/assets/{name}")).status_code == 404
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # What our own code (the function and shared/) still holds: 1,500 remembered misses of ~230-byte names
    # would be over 350 KB.
    ours = ("/functions/", "/shared/")
    grown = sum(stat.size_diff for stat in after.compare_to(before, "traceback")
                if any(part in frame.filename for frame in stat.traceback for part in ours))
    assert grown < 30_000, grown
    assert assets() == files


def test_the_token_memory_is_bounded_and_least_recently_used_goes_first(settings, monkeypatch):
    memory = VerifiedTokens(size=173)
    monkeypatch.setattr(auth_module, "VERIFIED", memory)
    tokens = [issue_token(settings, role=Role.SALES_MANAGER, subject=f"s{i}") for i in range(2000)]
    keep = tokens[0]
    for token in tokens:
        assert authenticate(f"Bearer {token}", settings).role is Role.SALES_MANAGER
        authenticate(f"Bearer {keep}", settings)  # used all the time: never the least recently used
    assert len(memory) == 173
    secret = settings.auth_jwt_secret.get_secret_value()
    assert memory.get(VerifiedTokens.key(secret, keep), 0) is not None
    assert memory.get(VerifiedTokens.key(secret, tokens[1]), 0) is None  # evicted, not the whole memory cleared
    # The 172 most recent ones (and `keep`) are all there: evicted one by one, never all at once.
    assert all(memory.get(VerifiedTokens.key(secret, t), 0) is not None for t in tokens[-172:])
    # No entry holds the token itself.
    assert all(isinstance(k, bytes) and len(k) == 32 for k in memory._entries)


def test_one_token_written_differently_is_one_entry(settings, monkeypatch):
    memory = VerifiedTokens(size=50)
    monkeypatch.setattr(auth_module, "VERIFIED", memory)
    token = issue_token(settings, role=Role.ADMIN, subject="spacing")
    for header in (f"Bearer {token}", f"bearer {token}", f"BEARER   {token}  ", f"  Bearer {token}"):
        assert authenticate(header, settings).subject == "spacing"
    assert len(memory) == 1
    with pytest.raises(Unauthorized):
        authenticate(f"Basic {token}", settings)


async def test_many_distinct_tokens_through_the_function_keep_the_shared_memory_at_its_size(call, settings):
    for i in range(VERIFIED.size + 300):
        token = issue_token(settings, role=Role.ADMIN, subject=f"many-{i}")
        if i % 100 == 0:  # one real request per hundred: the memory is the same one the function uses
            assert (await call("get_mode", "GET", "/api/admin/system/mode", headers=auth(token))).status_code == 200
        else:
            authenticate(f"Bearer {token}", settings)
    assert len(VERIFIED) == VERIFIED.size
