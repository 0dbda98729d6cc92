"""Token buckets by hand: burst, refill, independent clients, eviction, off."""

import pytest

from features.admission import RateLimiter


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
    from features.admission import InFlightLimit

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
    from features.admission import InFlightLimit

    lim = InFlightLimit(0)
    assert all(lim.try_enter(write=False) for _ in range(10_000)) and lim.shed == {"read": 0, "write": 0}
    with pytest.raises(ValueError, match="max_in_flight must be >= 0"):
        InFlightLimit(-1)


def test_client_identity_is_a_valid_key_else_the_address():
    from features.admission import client_id

    keys = ("shop-web", "shop-app")
    assert client_id("shop-web", keys, "10.1.2.3") != client_id("shop-app", keys, "10.1.2.3")
    assert client_id("shop-web", keys, "10.1.2.3") == client_id("shop-web", keys, "10.9.9.9")  # the key, not the address
    # an unknown key, a wrong one, or none: the address decides
    assert client_id("made-up", keys, "10.1.2.3") == client_id(None, keys, "10.1.2.3") == "ip:10.1.2.3"
    assert client_id("anything", (), "10.1.2.3") == "ip:10.1.2.3"  # no keys configured: every key is unknown


def test_rotating_keys_cannot_exceed_the_per_address_limit():
    from features.admission import client_id

    rl = RateLimiter(rate=1.0, burst=5)
    allowed = sum(rl.allow(client_id(f"random-key-{i}", ("the-real-key",), "203.0.113.7"), 0.0)[0] for i in range(200))
    assert allowed == 5 and len(rl) == 1  # one bucket for the address, however many keys were tried
    assert rl.allow(client_id("the-real-key", ("the-real-key",), "203.0.113.7"), 0.0)[0]  # a real key has its own


def test_forwarded_for_is_believed_only_from_trusted_proxies():
    from features.admission import client_address, parse_networks

    proxies = parse_networks(["10.0.0.0/8", "127.0.0.1"])
    # a trusted proxy forwards: the right-most untrusted hop is the client
    assert client_address("10.0.0.5", "198.51.100.9", proxies) == "198.51.100.9"
    assert client_address("127.0.0.1", "198.51.100.9, 10.0.0.5", proxies) == "198.51.100.9"
    # a client cannot choose its address by writing the header: the left of the real hop is ignored
    assert client_address("10.0.0.5", "1.2.3.4, 198.51.100.9", proxies) == "198.51.100.9"
    # from an untrusted peer the header is ignored, and without trusted proxies it always is
    assert client_address("198.51.100.9", "1.2.3.4", proxies) == "198.51.100.9"
    assert client_address("10.0.0.5", "1.2.3.4", ()) == "10.0.0.5"
    assert client_address("10.0.0.5", None, proxies) == "10.0.0.5" and client_address(None, None, ()) == "unknown"
    assert client_address("10.0.0.5", "10.0.0.6, 10.0.0.7", proxies) == "10.0.0.6"  # every hop a proxy: the first
    with pytest.raises(ValueError, match=r"trusted_proxies\[1\]: 'not-an-ip'"):
        parse_networks(["10.0.0.0/8", "not-an-ip"])


def test_writes_need_a_key_or_an_explicit_anonymous_switch():
    from features.admission import write_refusal

    assert write_refusal(None, (), allow_anonymous=False)[0] == 403  # no key configured: closed by default
    assert "allow_anonymous_writes is false" in write_refusal("x", (), allow_anonymous=False)[1]
    assert write_refusal(None, (), allow_anonymous=True) is None  # the local demo's switch
    assert write_refusal(None, ("k1", "k2"), allow_anonymous=True) == (401, "missing API key: send it in the X-API-Key header")
    assert write_refusal("k3", ("k1", "k2"), allow_anonymous=False) == (401, "wrong API key")
    assert write_refusal("k2", ("k1", "k2"), allow_anonymous=False) is None  # either configured key
