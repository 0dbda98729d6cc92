"""Nearline user profiles: the math that folds one event into a shopper's state.

A profile holds
- a short-term intent: the decayed sum of this session's query and item embeddings, weighted by
  event type (half-life `intent_half_life_s`, reset when a new session starts);
- a long-term preference: the decayed sum of every item embedding the shopper interacted with
  (half-life `preference_half_life_days`), seeded by the feature job (features/profiles/seed.py);
- recent items and queries (newest first), decayed category weights, the log-price mean/std of
  positive interactions, and the purchased items (excluded from recommendations by default).

Sums are kept as float64 "value at time ts": folding an event at t >= ts first decays the sum to
t, an event older than ts (a late arrival) is decayed to ts instead, so the result does not depend
on arrival order. The user vector mixes the two unit vectors,
    u = normalize(alpha * intent + (1 - alpha) * preference),
    alpha = alpha_max * 0.5 ** ((now - last_intent_event) / intent_half_life_s),
so alpha rises with session freshness: right after an event the session dominates, an hour later
the long-term taste does. (alpha = 1 without a preference, 0 without an intent.)
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.data import schema as S
from features.data.transforms import default_event_weights


def _default_weights() -> dict[str, float]:
    # The feature job's funnel weights, except searches: a typed query is the strongest statement
    # of the current need, and query vectors sit farther from item vectors (top cosine ~0.6 on the
    # bundled data) than items from each other (~0.95), so a search weighs as much as an add-to-cart.
    return {**default_event_weights(), S.EventType.SEARCH.value: 3.0}


@dataclass(frozen=True)
class ProfileParams:
    event_weights: dict[str, float] = field(default_factory=_default_weights)
    intent_half_life_s: float = 1800.0
    preference_half_life_days: float = 30.0
    session_gap_s: float = 1800.0  # inactivity after which the next event starts a new session
    alpha_max: float = 0.8
    recent_items: int = 50
    recent_queries: int = 10
    top_categories: int = 20
    purchased_max: int = 500

    def __post_init__(self) -> None:
        unknown = sorted(set(self.event_weights) - set(S.EVENT_TYPES))
        if unknown:
            raise ValueError(f"profiles.event_weights: unknown event type(s) {unknown}; allowed: {', '.join(S.EVENT_TYPES)}")
        for name in ("intent_half_life_s", "preference_half_life_days", "session_gap_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"profiles.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.alpha_max <= 1:
            raise ValueError(f"profiles.alpha_max must be in [0, 1], got {self.alpha_max}")

    def weight(self, event_type: str) -> float:
        return self.event_weights.get(event_type, _default_weights()[event_type])


def _decayed(total: np.ndarray | None, ts: float, vec: np.ndarray, w: float, t: float,
             half_life_s: float) -> tuple[np.ndarray, float]:
    """Fold w * vec at time t into a decayed sum held at time ts; returns (sum, new ts)."""
    v = vec.astype(np.float64)
    if total is None:
        return w * v, t
    if t >= ts:
        return total * 0.5 ** ((t - ts) / half_life_s) + w * v, t
    return total + w * 0.5 ** ((ts - t) / half_life_s) * v, ts


def _unit(v: np.ndarray | None) -> np.ndarray | None:
    if v is None:
        return None
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 and math.isfinite(n) else None


def mix(intent: np.ndarray | None, preference: np.ndarray | None, alpha: float) -> np.ndarray | None:
    """The user vector normalize(alpha * intent + (1 - alpha) * preference); None without either."""
    if intent is None and preference is None:
        return None
    total = np.zeros_like(intent if intent is not None else preference, dtype=np.float64)
    if intent is not None:
        total += alpha * intent
    if preference is not None:
        total += (1 - alpha) * preference
    return _unit(total)


@dataclass
class Profile:
    user_id: str
    intent_sum: np.ndarray | None = None  # (d,) float64, value at intent_ts
    intent_ts: float = 0.0  # epoch seconds of the newest intent event
    session_start_ts: float = 0.0
    pref_sum: np.ndarray | None = None  # (d,) float64, value at pref_ts
    pref_ts: float = 0.0
    recent_items: list[tuple[str, str, float]] = field(default_factory=list)  # (item_id, event_type, ts), newest first
    recent_queries: list[tuple[str, float]] = field(default_factory=list)  # (query, ts), newest first
    category_weights: dict[str, float] = field(default_factory=dict)  # value at cat_ts
    cat_ts: float = 0.0
    price_w: float = 0.0  # weighted count, sum and sum of squares of log1p(price)
    price_sum: float = 0.0
    price_sq: float = 0.0
    purchased: list[str] = field(default_factory=list)
    n_events: int = 0
    last_ts: float = 0.0
    last_query_vec: np.ndarray | None = None  # (d,) embedding of the newest search, for explanations
    seq: int = 0  # the newest event-log seq folded in (replay skips what a stored profile holds)

    # --- reading -----------------------------------------------------------------------------
    def intent(self) -> np.ndarray | None:
        return _unit(self.intent_sum)

    def preference(self) -> np.ndarray | None:
        return _unit(self.pref_sum)

    def alpha(self, now: float, p: ProfileParams) -> float:
        if self.intent() is None:
            return 0.0
        if self.preference() is None:
            return 1.0
        return p.alpha_max * 0.5 ** (max(now - self.intent_ts, 0.0) / p.intent_half_life_s)

    def user_vector(self, now: float, p: ProfileParams) -> tuple[np.ndarray | None, float]:
        """(u (d,) float32 unit vector or None for a user with no vector, alpha)."""
        a = self.alpha(now, p)
        return mix(self.intent(), self.preference(), a), a

    def category_affinity(self) -> dict[str, float]:
        """Category -> share of the decayed weight (sums to 1)."""
        total = sum(self.category_weights.values())
        return {c: w / total for c, w in self.category_weights.items()} if total > 0 else {}

    def price_stats(self) -> tuple[float, float] | None:
        """(mean, std) of log1p(price) over positive interactions, or None."""
        if self.price_w <= 0:
            return None
        mean = self.price_sum / self.price_w
        return mean, math.sqrt(max(self.price_sq / self.price_w - mean * mean, 0.0))

    # --- writing -----------------------------------------------------------------------------
    def fold(self, event_type: str, ts: float, p: ProfileParams, vector: np.ndarray | None = None,
             item_id: str | None = None, query: str | None = None, category: str | None = None,
             price: float | None = None) -> None:
        """Fold one event. `vector` is the item's embedding (item events) or the query's (search)."""
        if event_type not in S.EVENT_TYPES:
            raise ValueError(f"event_type {event_type!r}; allowed: {', '.join(S.EVENT_TYPES)}")
        w = p.weight(event_type)
        if self.n_events and ts - self.last_ts > p.session_gap_s:
            self.intent_sum, self.session_start_ts = None, ts  # a new session: the old intent is history
        if not self.n_events:
            self.session_start_ts = ts
        elif self.session_start_ts - p.session_gap_s <= ts < self.session_start_ts:
            self.session_start_ts = ts  # a late event from the start of this session
        self.n_events += 1
        self.last_ts = max(self.last_ts, ts)
        if vector is not None and w > 0 and ts >= self.session_start_ts:
            self.intent_sum, self.intent_ts = _decayed(self.intent_sum, self.intent_ts, vector, w, ts,
                                                       p.intent_half_life_s)
        if event_type == S.EventType.SEARCH.value:
            if query:
                newest = not self.recent_queries or ts >= self.recent_queries[0][1]
                self.recent_queries = _push(self.recent_queries, (query, ts), p.recent_queries)
                if newest and vector is not None:
                    self.last_query_vec = np.asarray(vector, dtype=np.float32)
            return
        if item_id is None:
            return
        self.recent_items = _push(self.recent_items, (item_id, event_type, ts), p.recent_items)
        if event_type == S.EventType.PURCHASE.value and item_id not in self.purchased:
            self.purchased = [item_id, *self.purchased][: p.purchased_max]
        if w <= 0:
            return
        hl_s = p.preference_half_life_days * 86400.0
        if vector is not None:
            self.pref_sum, self.pref_ts = _decayed(self.pref_sum, self.pref_ts, vector, w, ts, hl_s)
        if category:
            self._fold_category(category, w, ts, hl_s, p.top_categories)
        if price is not None and price > 0 and math.isfinite(price):
            lp = math.log1p(price)
            self.price_w += w
            self.price_sum += w * lp
            self.price_sq += w * lp * lp

    def _fold_category(self, category: str, w: float, ts: float, hl_s: float, top: int) -> None:
        if ts >= self.cat_ts:
            f = 0.5 ** ((ts - self.cat_ts) / hl_s) if self.category_weights else 1.0
            self.category_weights = {c: v * f for c, v in self.category_weights.items()}
            self.cat_ts = ts
            add = w
        else:
            add = w * 0.5 ** ((self.cat_ts - ts) / hl_s)
        self.category_weights[category] = self.category_weights.get(category, 0.0) + add
        if len(self.category_weights) > top:
            keep = sorted(self.category_weights.items(), key=lambda kv: -kv[1])[:top]
            self.category_weights = dict(keep)

    # --- storage (JSON-able; vectors as base64 float64, no pickle) -----------------------------
    def to_dict(self) -> dict[str, Any]:
        def vec(v: np.ndarray | None) -> str | None:
            return None if v is None else base64.b64encode(v.astype("<f8").tobytes()).decode()

        return {"user_id": self.user_id, "intent_sum": vec(self.intent_sum), "intent_ts": self.intent_ts,
                "session_start_ts": self.session_start_ts, "pref_sum": vec(self.pref_sum), "pref_ts": self.pref_ts,
                "recent_items": [list(x) for x in self.recent_items],
                "recent_queries": [list(x) for x in self.recent_queries],
                "category_weights": self.category_weights, "cat_ts": self.cat_ts, "price_w": self.price_w,
                "price_sum": self.price_sum, "price_sq": self.price_sq, "purchased": self.purchased,
                "n_events": self.n_events, "last_ts": self.last_ts, "seq": self.seq,
                "last_query_vec": vec(self.last_query_vec)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Profile":
        def vec(s: str | None) -> np.ndarray | None:
            return None if s is None else np.frombuffer(base64.b64decode(s), dtype="<f8").astype(np.float64)

        return cls(user_id=d["user_id"], intent_sum=vec(d["intent_sum"]), intent_ts=d["intent_ts"],
                   session_start_ts=d["session_start_ts"], pref_sum=vec(d["pref_sum"]), pref_ts=d["pref_ts"],
                   recent_items=[(str(a), str(b), float(c)) for a, b, c in d["recent_items"]],
                   recent_queries=[(str(a), float(b)) for a, b in d["recent_queries"]],
                   category_weights=dict(d["category_weights"]), cat_ts=d["cat_ts"], price_w=d["price_w"],
                   price_sum=d["price_sum"], price_sq=d["price_sq"], purchased=list(d["purchased"]),
                   n_events=d["n_events"], last_ts=d["last_ts"], seq=d.get("seq", 0),
                   last_query_vec=None if d.get("last_query_vec") is None else vec(d["last_query_vec"]).astype(np.float32))


def _push(items: list, entry: tuple, limit: int) -> list:
    """Insert `entry` keeping newest-first order by its last field (ts); cap at `limit`."""
    ts = entry[-1]
    i = 0
    while i < len(items) and items[i][-1] > ts:
        i += 1
    return (items[:i] + [entry] + items[i:])[:limit]
