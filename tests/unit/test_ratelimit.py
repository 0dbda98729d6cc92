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


def test_in_flight_limit_sheds_reads_first_and_frees_slots():
    from features.ratelimit import InFlightLimit

    lim = InFlightLimit(limit=2, write_reserve=1)
    assert lim.try_enter(write=False) and lim.try_enter(write=False)
    assert not lim.try_enter(write=False)  # the read limit is reached
    assert lim.try_enter(write=True)  # a write may still use the reserve
    assert not lim.try_enter(write=True)  # the reserve is used up too
    assert lim.shed == {"read": 1, "write": 1} and lim.in_flight == 3
    lim.leave(), lim.leave()
    assert lim.try_enter(write=False) and lim.in_flight == 2
    for _ in range(2):
        lim.leave()
    with pytest.raises(RuntimeError, match="without a matching try_enter"):
        lim.leave()


def test_in_flight_limit_zero_is_off_and_bad_settings_name_the_keys():
    from features.ratelimit import InFlightLimit

    lim = InFlightLimit(0)
    assert all(lim.try_enter(write=False) for _ in range(10_000)) and lim.shed == {"read": 0, "write": 0}
    with pytest.raises(ValueError, match="max_in_flight must be >= 0"):
        InFlightLimit(-1)
