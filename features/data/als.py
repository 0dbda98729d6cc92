"""Implicit-feedback matrix factorisation (Hu, Koren & Volinsky, "Collaborative Filtering for
Implicit Feedback Datasets", ICDM 2008), fitted with the `implicit` library's ALS on the distinct
(shopper, item) positive pairs EASE is fitted on (features/data/ease.py's `user_item_pairs`).

With every pair's confidence 1 (implicit's `alpha` 1 on a binary matrix), the shopper vector
that ALS solves for a history h, with the item factors Y held fixed (implicit's
`recalculate_user`), is

    u = (Y'Y + lambda I)^-1  sum_{i in h} y_i

so it scores any history, including one that grew after the fit, with one small solve:
`AlsScorer` does it for serving's ranking features (`als`, `als_rank`), the same numbers as
`implicit` (tests/unit/test_als.py checks it against `recalculate_user`).

- `fit_model`: the fitted `implicit` model on the pairs (the evaluation's ALS baseline uses it too);
- `als_table`: the feature job's output, each kept item's factors (`als/`);
- `AlsScorer`: a features version's table bound to a catalog's rows (ranking features, and
  recommend's candidates when `retriever.als_candidates` > 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from scipy import sparse

from features.data import schema as S
from features.data.transforms import FeatureParams

ALS_ITERATIONS = 30
FACTORS = "factors"
REGULARIZATION = "regularization"


def fit_model(pairs: pl.DataFrame, factors: int, regularization: float, seed: int = 0, threads: int = 1,
              max_items: int = 0) -> tuple[list[str], Any, int] | None:
    """(item ids by factor row, the fitted `implicit` ALS model, shoppers) on (user_id, item_id)
    pairs; the `max_items` items with most shoppers when > 0. None with fewer than 2 items."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    if max_items > 0:
        top = (pairs.group_by(S.ITEM_ID).agg(pl.len().alias("n")).sort(["n", S.ITEM_ID], descending=[True, False])
               .head(max_items).get_column(S.ITEM_ID))
        pairs = pairs.filter(pl.col(S.ITEM_ID).is_in(top.implode()))
    item_ids = pairs[S.ITEM_ID].unique().sort().to_list()
    if len(item_ids) < 2:
        return None
    users = pairs[S.USER_ID].unique().sort()
    u = pairs[S.USER_ID].replace_strict(users, pl.int_range(len(users), eager=True), return_dtype=pl.Int64).to_numpy()
    i = pairs[S.ITEM_ID].replace_strict(item_ids, pl.int_range(len(item_ids), eager=True), return_dtype=pl.Int64).to_numpy()
    x = sparse.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(len(users), len(item_ids)))
    with threadpool_limits(1, "blas"):  # implicit's own threads; BLAS threads on top of them oversubscribe
        model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=1.0,
                                        iterations=ALS_ITERATIONS, random_state=seed, num_threads=threads)
        model.fit(x, show_progress=False)
    return item_ids, model, len(users)


def als_table(pairs: pl.DataFrame, p: FeatureParams, seed: int = 0, threads: int = 1) -> tuple[pl.DataFrame | None, dict]:
    """(item_id, factors, regularization) of each fitted item, and the fit's info ({"fitted": False}
    and None when disabled by `features.als_factors: 0` or with fewer than 2 items)."""
    if p.als_factors == 0 or pairs.is_empty():
        return None, {"enabled": p.als_factors > 0, "fitted": False}
    fitted = fit_model(pairs, p.als_factors, p.als_regularization, seed, threads, p.als_max_items)
    if fitted is None:
        return None, {"enabled": True, "fitted": False}
    item_ids, model, n_users = fitted
    y = np.asarray(model.item_factors, np.float32)
    table = pl.DataFrame({S.ITEM_ID: item_ids,
                          FACTORS: pl.Series(FACTORS, y, dtype=pl.Array(pl.Float32, y.shape[1])),
                          REGULARIZATION: np.full(len(item_ids), p.als_regularization)})
    return table, {"enabled": True, "fitted": True, "items": len(item_ids), "users": n_users,
                   "factors": int(y.shape[1]), "regularization": p.als_regularization, "iterations": ALS_ITERATIONS}


class AlsScorer:
    """A features version's ALS factors by catalog row: `user_vector` folds a history in (the
    solve above), `scores` scores candidate rows with it, `all_scores` every row (recommend's
    candidates). Rows are fixed at load; an item added later, or outside the fit, scores 0."""

    def __init__(self, table: pl.DataFrame | None, row: dict[str, int]) -> None:
        # catalog row -> factor row (-1: not fitted): an array, as every recommend request reads it
        self.by_row = np.full(max(row.values(), default=-1) + 1, -1, np.int64)
        self.catalog_rows = np.zeros(0, np.int64)  # factor row -> catalog row, -1: not in the catalog
        if table is None or table.is_empty():
            self.factors = np.zeros((0, 0), np.float32)
            self.solve = np.zeros((0, 0), np.float32)
            return
        y = np.asarray(table.get_column(FACTORS).to_numpy(), np.float64).reshape(table.height, -1)
        lam = float(table.get_column(REGULARIZATION)[0])
        self.catalog_rows = np.array([row.get(i, -1) for i in table.get_column(S.ITEM_ID).to_list()], np.int64)
        inside = np.flatnonzero(self.catalog_rows >= 0)
        self.by_row[self.catalog_rows[inside]] = inside
        self.factors = y.astype(np.float32)
        # (Y'Y + lambda I)^-1 over every fitted item, as implicit's solve has it
        self.solve = np.linalg.inv(y.T @ y + lam * np.eye(y.shape[1])).astype(np.float32)

    def __len__(self) -> int:
        return int((self.by_row >= 0).sum())

    def _factor_rows(self, rows: np.ndarray) -> np.ndarray:
        """Each catalog row's factor row, -1 outside the fit (including rows added after load)."""
        rows = np.asarray(rows, np.int64)
        inside = (rows >= 0) & (rows < len(self.by_row))
        return np.where(inside, self.by_row[np.where(inside, rows, 0)] if len(self.by_row) else -1, -1)

    def user_vector(self, rows) -> np.ndarray | None:
        """The shopper vector of the history's catalog rows; None when none of them was fitted."""
        k = self._factor_rows(np.fromiter(rows, np.int64))
        known = np.unique(k[k >= 0])
        if not len(known):
            return None
        return self.solve @ self.factors[known].sum(axis=0, dtype=np.float64).astype(np.float32)

    def strongest(self, rows, target: int) -> int | None:
        """The history row that adds most to `target`'s score (Hu, Koren & Volinsky's explanation:
        the score is a sum over the history, y_t' W y_j for each item j, W the solve above), the
        smallest such row on a tie; None when no fitted history item adds anything."""
        hist = np.unique(np.fromiter(rows, np.int64))
        k, t = self._factor_rows(hist), self._factor_rows(np.array([target]))[0]
        hist, k = hist[k >= 0], k[k >= 0]
        if t < 0 or not len(k):
            return None
        share = self.factors[k] @ (self.solve @ self.factors[t])
        i = int(np.argmax(share))
        return int(hist[i]) if share[i] > 0 else None

    def all_scores(self, user: np.ndarray, n: int) -> np.ndarray:
        """(n,) the score of each of a catalog's first n rows; -inf for a row outside the fit. One
        product over the fitted factors as stored (gathering them by catalog row would copy them)."""
        out = np.full(n, -np.inf, np.float32)
        if len(self.catalog_rows):
            s = self.factors @ user
            ok = (self.catalog_rows >= 0) & (self.catalog_rows < n)
            out[self.catalog_rows[ok]] = s[ok]
        return out

    def scores(self, user: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(C,) item factors . user of the candidate rows (0 for a row outside the fit)."""
        k = self._factor_rows(rows)
        out = np.zeros(len(k), np.float32)
        fitted = k >= 0
        out[fitted] = self.factors[k[fitted]] @ user
        return out
