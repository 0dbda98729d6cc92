"""Admission control: per-client token buckets (RateLimiter) and load shedding (InFlightLimit).

RateLimiter: a steady request rate per client with a burst allowance, bounded memory.

A client is whoever the caller says (the Ingress uses a hash of the API key when one is sent,
else the client address). Each bucket holds up to `burst` tokens and refills at `rate` per second;
a request takes one token or is refused with the seconds until the next token. Buckets of idle
clients are evicted least-recently-used beyond `max_clients` (an evicted client starts full).

InFlightLimit: at most `limit` requests in progress at once (reads and writes together); writes
may use `write_reserve` slots more, so a read flood cannot starve the event log. A request over
the limit is refused at once (the Ingress answers 503 + Retry-After) instead of queueing until the
client times out: by Little's law, a bound on the requests in progress is a bound on the wait of
every request admitted (in progress / throughput).
"""

from __future__ import annotations

from collections import OrderedDict


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
