"""Per-client token buckets: a steady request rate with a burst allowance, bounded memory.

A client is whoever the caller says (the Ingress uses a hash of the API key when one is sent,
else the client address). Each bucket holds up to `burst` tokens and refills at `rate` per second;
a request takes one token or is refused with the seconds until the next token. Buckets of idle
clients are evicted least-recently-used beyond `max_clients` (an evicted client starts full).
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
