"""Simple recommenders a shop could pick instead of intently: the baselines of the evaluation.

Each returns (Q, K) lists of catalog rows, best first, -1 padding, built from training events only.
- global popularity: positive events per item;
- recent popularity: the same, each event decayed by its age at `as_of` (half-life in days);
- item-to-item co-occurrence: neighbours of the request's recent items (the feature job's table),
  discounted per step back in the history, topped up with popularity;
- ALS matrix factorisation (`AlsModel`), scoring a shopper's history as EASE does.
Items in a request's `exclude` set (e.g. already bought) are never returned.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy import sparse

from features.data import als
from features.data import schema as S

# (factors, regularization) tried on the validation requests (jobs/evaluate.py); every pair's confidence 1
# (features/data/als.py).
ALS_GRID = tuple((f, r) for f in (64, 128, 256) for r in (3.0, 10.0, 20.0))
ALS_DEFAULT = (128, 10.0)  # without validation requests


@dataclass
class AlsModel:
    """Implicit-feedback matrix factorisation (Hu, Koren & Volinsky, ICDM 2008; the `implicit`
    library's ALS) on the distinct (shopper, item) positive pairs EASE is fitted on. A shopper's
    vector is solved from their history at request time (implicit's `recalculate_user`), so, like
    EASE, it scores any history, including one that grew after the fit."""

    item_ids: list[str]
    model: Any
    info: dict

    def __post_init__(self) -> None:
        self.row = {i: r for r, i in enumerate(self.item_ids)}

    def scores(self, history: list[str]) -> np.ndarray:
        """(N,) item factors . the history's folded-in shopper vector (zeros without a known item)."""
        rows = sorted({self.row[i] for i in history if i in self.row})
        if not rows:
            return np.zeros(len(self.item_ids), np.float32)
        x = sparse.csr_matrix((np.ones(len(rows), np.float32), ([0] * len(rows), rows)), shape=(1, len(self.item_ids)))
        return self.model.item_factors @ np.asarray(self.model.recalculate_user(0, x)).ravel()


def fit_als(pairs: pl.DataFrame, factors: int, regularization: float, seed: int = 0, threads: int = 1) -> AlsModel | None:
    """ALS on (user_id, item_id) pairs (features/data/ease.py's `user_item_pairs`); None with fewer than 2 items."""
    fitted = als.fit_model(pairs, factors, regularization, seed, threads)
    if fitted is None:
        return None
    item_ids, model, n_users = fitted
    return AlsModel(item_ids, model, {"factors": factors, "regularization": regularization,
                                      "iterations": als.ALS_ITERATIONS, "users": n_users, "items": len(item_ids)})


def popularity_scores(events: pl.DataFrame, item_ids: list[str], as_of: dt.datetime | None = None,
                      half_life_days: float | None = None) -> np.ndarray:
    """(N,) popularity of each catalog item from positive events: a count, or with half_life_days
    a sum of 0.5 ** (age_days / half_life_days) with ages at `as_of`. Events after as_of are ignored."""
    pos = events.filter(pl.col(S.EVENT_TYPE).is_in(list(S.POSITIVE_EVENT_TYPES)) & pl.col(S.ITEM_ID).is_not_null())
    if half_life_days is None:
        weight = pl.len().cast(pl.Float64)  # (a literal's sum would be 1 per group, not a count)
    else:
        if as_of is None or half_life_days <= 0:
            raise ValueError("recent popularity needs as_of and half_life_days > 0")
        pos = pos.filter(pl.col(S.TS) <= pl.lit(as_of).dt.cast_time_unit("us"))
        age_days = (pl.lit(as_of).dt.cast_time_unit("us") - pl.col(S.TS)).dt.total_microseconds() / 86_400e6
        weight = (0.5 ** (age_days / half_life_days)).sum()
    totals = pos.group_by(S.ITEM_ID).agg(weight.alias("w"))
    lookup = dict(zip(totals[S.ITEM_ID].to_list(), totals["w"].to_list()))
    return np.array([float(lookup.get(i, 0.0)) for i in item_ids], dtype=np.float64)


def top_k(scores: np.ndarray, k: int, exclude: list[set[int]]) -> np.ndarray:
    """The same ranking for every request, minus each request's excluded rows: (Q, k)."""
    order = np.argsort(-scores, kind="stable")
    out = np.full((len(exclude), k), -1, dtype=np.int64)
    for q, ex in enumerate(exclude):
        picked = [int(r) for r in order[: k + len(ex)] if int(r) not in ex][:k]
        out[q, : len(picked)] = picked
    return out


def cooccurrence_scores(cooc: dict[str, tuple[list[str], np.ndarray]], hist: list[str], row: dict[str, int],
                        discount: float = 0.85, history_len: int = 10) -> dict[int, float]:
    """row -> sum over the last `history_len` items (newest first) of discount ** step * co-occurrence."""
    acc: dict[int, float] = {}
    for step, src in enumerate(hist[:history_len]):
        nbrs = cooc.get(src)
        if nbrs is None:
            continue
        for nbr, s in zip(nbrs[0], nbrs[1]):
            r = row.get(nbr)
            if r is not None:
                acc[r] = acc.get(r, 0.0) + discount ** step * float(s)
    return acc


def cooccurrence_lists(cooc: dict[str, tuple[list[str], np.ndarray]], histories: list[list[str]],
                       row: dict[str, int], fallback: np.ndarray, k: int, exclude: list[set[int]],
                       discount: float = 0.85, history_len: int = 10) -> np.ndarray:
    """Item-to-item recommendations: sum over the last `history_len` items (newest first) of
    discount ** step * co-occurrence score; ties and empty histories fall back to `fallback` scores."""
    if len(histories) != len(exclude):
        raise ValueError(f"{len(histories)} histories but {len(exclude)} exclude sets")
    fb = top_k(fallback, k, [set() for _ in histories]) if len(histories) else np.zeros((0, k), np.int64)
    out = np.full((len(histories), k), -1, dtype=np.int64)
    for q, (hist, ex) in enumerate(zip(histories, exclude)):
        acc = {r: v for r, v in cooccurrence_scores(cooc, hist, row, discount, history_len).items() if r not in ex}
        ranked = sorted(acc, key=lambda r: (-acc[r], -fallback[r], r))[:k]
        for r in fb[q]:
            if len(ranked) >= k:
                break
            if r >= 0 and int(r) not in ex and int(r) not in acc:
                ranked.append(int(r))
        if len(ranked) < k:  # the fallback's head was excluded: walk further down
            for r in np.argsort(-fallback, kind="stable"):
                if len(ranked) >= k:
                    break
                if int(r) not in ex and int(r) not in ranked:
                    ranked.append(int(r))
        out[q, : len(ranked)] = ranked
    return out
