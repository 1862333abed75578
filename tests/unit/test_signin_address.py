"""Which address the sign-in throttle counts: the proxy's own X-Forwarded-For entry, never one the client wrote."""

from __future__ import annotations

import pytest

from shared.accounts.signin import client_address


@pytest.mark.parametrize(("headers", "peer", "hops", "expected"), [
    ([], "127.0.0.1", 1, "127.0.0.1"),                                   # no proxy: the TCP peer
    (["203.0.113.9"], "127.0.0.1", 1, "203.0.113.9"),                    # the local gateway's entry
    (["6.6.6.6, 203.0.113.9"], "127.0.0.1", 1, "203.0.113.9"),           # a forged entry on the left is ignored
    (["6.6.6.6", "203.0.113.9"], "127.0.0.1", 1, "203.0.113.9"),         # two headers: the last one is the proxy's
    (["6.6.6.6, 203.0.113.9, 35.191.0.1"], "10.0.0.1", 2, "203.0.113.9"),  # a cloud load balancer appends 2
    (["203.0.113.9"], "10.0.0.1", 2, "10.0.0.1"),                        # fewer entries than hops: the peer
    (["6.6.6.6"], "10.0.0.1", 0, "10.0.0.1"),                            # no trusted proxy: the header is ignored
    ([], None, 1, "unknown"),
])
def test_the_client_address_is_the_trusted_proxys_entry(headers, peer, hops, expected):
    assert client_address(headers, peer, hops) == expected
