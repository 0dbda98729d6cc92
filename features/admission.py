"""Admission control: per-client token buckets (RateLimiter) and load shedding (InFlightLimit).

RateLimiter: a steady request rate per client with a burst allowance, bounded memory.

A client is whoever the caller says; the Ingress asks `client_id`: a configured API key that the
request proved it holds, else the client's address (`client_address`, which reads a forwarded-for
header only when it comes from a configured proxy). An unknown or wrong key is no identity at all,
so rotating random keys cannot mint fresh buckets: they all share their address's. Each bucket holds up to `burst` tokens and refills at `rate` per second;
a request takes one token or is refused with the seconds until the next token. Buckets of idle
clients are evicted least-recently-used beyond `max_clients` (an evicted client starts full).

InFlightLimit: at most `limit` requests in progress at once (reads and writes together); writes
may use `write_reserve` slots more, so a read flood cannot starve the event log. A request over
the limit is refused at once (the Ingress answers 503 + Retry-After) instead of queueing until the
client times out: by Little's law, a bound on the requests in progress is a bound on the wait of
every request admitted (in progress / throughput).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections import OrderedDict
from typing import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str], key: str = "rate_limit.trusted_proxies") -> tuple[Network, ...]:
    """CIDRs ("10.0.0.0/8", "127.0.0.1") -> networks; ValueError names the key and the bad entry."""
    out = []
    for i, c in enumerate(cidrs):
        try:
            out.append(ipaddress.ip_network(str(c).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{key}[{i}]: {c!r} is not an IP address or CIDR network "
                             "(e.g. 127.0.0.1 or 10.0.0.0/8)") from None
    return tuple(out)


def _in(addr: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in n for n in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The address of the client a request came from.

    `peer` is the TCP peer. Only when it is a trusted proxy is `forwarded_for` (the X-Forwarded-For
    header, "client, proxy1, proxy2") read: from the right, proxies append the address they saw, so
    the first entry that is not a trusted proxy is the real client; entries to its left could have
    been written by anyone. With no trusted proxy configured the header is ignored."""
    addr = peer or "unknown"
    if not trusted or not forwarded_for or not _in(addr, trusted):
        return addr
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        addr = hop
        if not _in(hop, trusted):
            break
    return addr


def write_refusal(sent_key: str | None, valid_keys: tuple[str, ...], allow_anonymous: bool,
                  key_env: str = "INTENTLY_API_KEY") -> tuple[int, str] | None:
    """Why a write is refused, as (HTTP status, message), or None when it is allowed: with keys
    configured the request must carry one of them (401); with none, writes are refused (403) unless
    anonymous writes were explicitly allowed."""
    if not valid_keys:
        if allow_anonymous:
            return None
        return 403, (f"writes are disabled on this server: no API key is configured (${key_env}) and "
                     "allow_anonymous_writes is false")
    if sent_key is None:
        return 401, "missing API key: send it in the X-API-Key header"
    if not any(hmac.compare_digest(sent_key.encode(), k.encode()) for k in valid_keys):
        return 401, "wrong API key"
    return None


def client_id(sent_key: str | None, valid_keys: tuple[str, ...], address: str) -> str:
    """The rate-limit identity: "key:<hash>" for a valid API key, else "ip:<address>"."""
    if sent_key:
        given = sent_key.encode()
        for k in valid_keys:
            if hmac.compare_digest(given, k.encode()):
                return "key:" + hashlib.sha256(given).hexdigest()[:16]
    return "ip:" + address


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_clients: int = 100_000) -> None:
        if rate < 0 or burst < 1 or max_clients < 1:
            raise ValueError(f"rate_limit: requests_per_s must be >= 0 (0: off), burst >= 1, max_clients >= 1; "
                             f"got {rate}, {burst}, {max_clients}")
        self.rate, self.burst, self.max_clients = float(rate), float(burst), int(max_clients)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, client: str, now: float) -> tuple[bool, float]:
        """(allowed, seconds until a token is available when refused)."""
        if not self.enabled:
            return True, 0.0
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + max(now - at, 0.0) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return ok, 0.0 if ok else (1.0 - tokens) / self.rate


class InFlightLimit:
    def __init__(self, limit: int, write_reserve: int = 0) -> None:
        if limit < 0 or write_reserve < 0:
            raise ValueError(f"overload: max_in_flight must be >= 0 (0: off) and write_reserve >= 0; "
                             f"got {limit}, {write_reserve}")
        self.limit, self.write_reserve = int(limit), int(write_reserve)
        self.in_flight = 0
        self.shed = {"read": 0, "write": 0}

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def try_enter(self, write: bool) -> bool:
        """Take a slot (True) or refuse (False, counted in `shed`); a taken slot must be left."""
        cap = self.limit + (self.write_reserve if write else 0)
        if self.enabled and self.in_flight >= cap:
            self.shed["write" if write else "read"] += 1
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("InFlightLimit.leave without a matching try_enter")
        self.in_flight -= 1
