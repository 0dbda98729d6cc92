"""Token buckets by hand: burst, refill, independent clients, eviction, off."""

import pytest

from features.ratelimit import RateLimiter


def test_burst_then_steady_rate_with_the_wait_until_the_next_token():
    rl = RateLimiter(rate=2.0, burst=3)
    assert [rl.allow("a", 0.0)[0] for _ in range(4)] == [True, True, True, False]
    ok, wait = rl.allow("a", 0.0)
    assert not ok and wait == pytest.approx(0.5)  # one token every 0.5 s
    assert rl.allow("a", 0.49)[0] is False
    assert rl.allow("a", 0.5)[0] is True and rl.allow("a", 0.5)[0] is False
    assert [rl.allow("a", 100.0)[0] for _ in range(4)] == [True, True, True, False]  # refill caps at the burst


def test_clients_are_independent_and_memory_is_bounded():
    rl = RateLimiter(rate=1.0, burst=1, max_clients=2)
    assert rl.allow("a", 0)[0] and not rl.allow("a", 0)[0]
    assert rl.allow("b", 0)[0]  # b has its own bucket
    rl.allow("c", 0)  # evicts a, the least recently used
    assert len(rl) == 2 and rl.allow("a", 0)[0]  # a starts full again


def test_zero_rate_is_off_and_bad_settings_name_the_keys():
    rl = RateLimiter(rate=0, burst=1)
    assert all(rl.allow("a", 0)[0] for _ in range(1000)) and len(rl) == 0
    with pytest.raises(ValueError, match="requests_per_s must be >= 0"):
        RateLimiter(rate=-1, burst=1)
