"""Popularity as of each request's own time, for splits whose training part runs past a request.

Under `leave-last` each shopper's last interaction is a test request, and the training part holds
every other shopper's events: up to the end of the log, months after an early request. One features
version computed at the end of the training part would score a January basket with December's
"popular this week" and "today's trend". Serving never does that: its features are always of the
request's present. So for such splits the evaluation rebuilds popularity for every request from the
training events strictly before it, with the feature job's formula (features/data/transforms.py:
the event-type weight times 0.5 ** (age in days / half-life)), for the system's catalog and for the
popularity baselines alike. Item vectors, co-occurrence and the sequence models stay as trained on
the whole training part (as in every leave-last protocol).

`PopularityClock.at(t)` walks forward in time keeping one decayed sum per half-life, so scoring the
requests in time order costs O(items) per request plus each event once; a step back in time starts
over from the first event.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl

from features.data import schema as S
from features.data.transforms import FeatureParams
from features.retrieval.catalog import POPULARITY_HALF_LIFE_DAYS, POPULARITY_LONG_DAYS, POPULARITY_SHORT_DAYS, Catalog

DAY_S = 86_400.0


class PopularityClock:
    """Per-item popularity at any instant from the events strictly before it: for each entry of
    `half_lives_days`, the sum of weight * 0.5 ** (age_days / half_life), or, for None, the plain
    sum of weights (a count when every weight is 1)."""

    def __init__(self, events: pl.DataFrame, item_ids: list[str], weights: dict[str, float] | None,
                 half_lives_days: tuple[float | None, ...]) -> None:
        if any(h is not None and h <= 0 for h in half_lives_days):
            raise ValueError(f"half_lives_days must be positive (or None for a plain count), got {half_lives_days}")
        row = pl.DataFrame({S.ITEM_ID: list(item_ids), "__row": np.arange(len(item_ids), dtype=np.int64)})
        ev = events.filter(pl.col(S.ITEM_ID).is_not_null())
        if weights is None:  # positive events, weight 1: the baselines' popularity
            ev = ev.filter(pl.col(S.EVENT_TYPE).is_in(list(S.POSITIVE_EVENT_TYPES))).with_columns(pl.lit(1.0).alias("__w"))
        else:
            ev = ev.with_columns(pl.col(S.EVENT_TYPE).replace_strict(weights, default=0.0, return_dtype=pl.Float64)
                                 .alias("__w"))
        ev = (ev.filter(pl.col("__w") != 0).join(row, on=S.ITEM_ID, how="inner")
              .select((pl.col(S.TS).dt.epoch("us").cast(pl.Float64) / 1e6).alias("__t"), "__row", "__w").sort("__t"))
        self.n = len(item_ids)
        self.half_lives = tuple(half_lives_days)
        self._t = ev["__t"].to_numpy()
        self._rows = ev["__row"].to_numpy()
        self._w = ev["__w"].to_numpy()
        self._reset()

    def _reset(self) -> None:
        self._now = -np.inf
        self._next = 0  # first event not folded in yet
        self._sums = [np.zeros(self.n) for _ in self.half_lives]

    def at(self, t: float) -> list[np.ndarray]:
        """The popularity of every item at epoch second t, one array per half-life (read-only views
        of the clock's state: copy before changing them)."""
        if t < self._now:
            self._reset()
        end = int(np.searchsorted(self._t, t, side="left"))  # events strictly before t
        ts, rows, w = self._t[self._next:end], self._rows[self._next:end], self._w[self._next:end]
        for h, acc in zip(self.half_lives, self._sums):
            if h is None:
                np.add.at(acc, rows, w)
                continue
            if np.isfinite(self._now):
                acc *= 0.5 ** ((t - self._now) / (h * DAY_S))
            np.add.at(acc, rows, w * 0.5 ** ((t - ts) / (h * DAY_S)))
        self._now, self._next = t, end
        out = []
        for a in self._sums:
            v = a.view()
            v.flags.writeable = False
            out.append(v)
        return out


def catalog_clock(events: pl.DataFrame, catalog: Catalog, params: FeatureParams | None = None
                  ) -> Callable[[float], None]:
    """A function t -> None that sets `catalog`'s popularity (weekly, 1-day and 30-day) and each
    item's first-interaction time to what the feature job would compute from `events` before t."""
    p = params or FeatureParams()
    clock = PopularityClock(events, catalog.item_ids, {t: p.weight(t) for t in S.EVENT_TYPES},
                            (POPULARITY_HALF_LIFE_DAYS, POPULARITY_SHORT_DAYS, POPULARITY_LONG_DAYS))
    first = first_seen(events, catalog.item_ids)

    def apply(t: float) -> None:
        weekly, short, long = clock.at(t)
        catalog.set_popularity(weekly, short, long)
        catalog.set_first_seen(np.where(first < t, first, np.nan))

    return apply


def first_seen(events: pl.DataFrame, item_ids: list[str]) -> np.ndarray:
    """Epoch seconds of each item's first event of any type (the feature job's first_seen), NaN
    for an item without one."""
    first = (events.filter(pl.col(S.ITEM_ID).is_not_null()).group_by(S.ITEM_ID)
             .agg((pl.col(S.TS).min().dt.epoch("us").cast(pl.Float64) / 1e6).alias("__first")))
    aligned = pl.DataFrame({S.ITEM_ID: list(item_ids)}).join(first, on=S.ITEM_ID, how="left", maintain_order="left")
    return aligned["__first"].fill_null(np.nan).to_numpy().astype(np.float64)


def baseline_popularity(events: pl.DataFrame, item_ids: list[str], times: np.ndarray, half_life_days: float
                        ) -> tuple[Callable[[int], np.ndarray], Callable[[int], np.ndarray]]:
    """(all-time, recent) popularity of the baselines (features/evaluation/baselines.py: positive
    events, weight 1) for request q at times[q], each as a function q -> (N,) scores."""
    clock = PopularityClock(events, item_ids, None, (None, half_life_days))
    cache: dict[int, list[np.ndarray]] = {}

    def both(q: int) -> list[np.ndarray]:
        if q not in cache:
            cache.clear()
            cache[q] = clock.at(float(times[q]))
        return cache[q]

    return (lambda q: both(q)[0]), (lambda q: both(q)[1])
