"""EASE item-to-item weights (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019).

A linear model that predicts a shopper's interactions from their other interactions, fitted in
closed form on the (shopper x item) matrix X of positive interactions:

    P = (X'X + lambda I)^-1,   B = I - P / diag(P)   (column-wise; diag(B) = 0)

and a shopper with history h scores item j as sum_{i in h} B[i, j]. Unlike co-occurrence it
explains away items that are merely popular together, which is what makes it a strong
collaborative baseline for next-basket data.

- `user_item_pairs`: distinct (user, item) positive pairs with their newest time, per user block;
- `fit`: the items kept (the `ease_max_items` with most shoppers: the inverse is dense, N^2
  memory and N^3 time), lambda chosen on a leave-newest-out holdout of the shoppers when
  `ease_lambda` is unset, and B;
- `top_neighbours`: each item's `ease_top_m` largest positive weights, the table serving reads.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl
from scipy import sparse
from scipy.linalg import lapack

from features.data import schema as S
from features.data.transforms import FeatureParams, positive_expr

# lambda candidates as multiples of the mean diagonal of X'X (shoppers per item), so the grid
# follows the data's scale instead of one data set's constant.
LAMBDA_GRID = (0.5, 1.5, 4.0, 12.0, 36.0)
HOLDOUT_USERS = 3000
MIN_HISTORY_FOR_HOLDOUT = 3


def user_item_pairs(events: pl.DataFrame, as_of: dt.datetime | None = None) -> pl.DataFrame:
    """(user_id, item_id, ts) distinct positive pairs, ts = the newest such interaction."""
    ev = events.filter(positive_expr() & pl.col(S.USER_ID).is_not_null())
    if as_of is not None:
        ev = ev.filter(pl.col(S.TS) <= pl.lit(as_of).dt.cast_time_unit("us"))
    return ev.group_by(S.USER_ID, S.ITEM_ID).agg(pl.col(S.TS).max()).select(S.USER_ID, S.ITEM_ID, S.TS)


@dataclass
class EaseModel:
    """B over `item_ids` (dense float32, N x N) and how lambda was chosen."""

    item_ids: list[str]
    weights: np.ndarray
    info: dict

    def __post_init__(self) -> None:
        self.row = {i: r for r, i in enumerate(self.item_ids)}  # built once, not per scored shopper

    def scores(self, history: list[str]) -> np.ndarray:
        """(N,) sum of B's rows of the history's items (the fitted items only)."""
        rows = sorted({self.row[i] for i in history if i in self.row})
        return self.weights[rows].sum(axis=0) if rows else np.zeros(len(self.item_ids), np.float32)


def _matrix(pairs: pl.DataFrame, item_row: dict[str, int]) -> tuple[sparse.csr_matrix, pl.DataFrame]:
    kept = pairs.filter(pl.col(S.ITEM_ID).is_in(list(item_row)))
    users = kept.get_column(S.USER_ID).unique().sort()
    urow = pl.DataFrame({S.USER_ID: users, "__u": pl.int_range(0, len(users), eager=True)})
    kept = kept.join(urow, on=S.USER_ID).with_columns(
        pl.col(S.ITEM_ID).replace_strict(item_row, return_dtype=pl.Int64).alias("__i"))
    x = sparse.csr_matrix((np.ones(kept.height, np.float32), (kept["__u"].to_numpy(), kept["__i"].to_numpy())),
                          shape=(len(users), len(item_row)))
    return x, kept


def _weights(gram: np.ndarray, lam: float) -> np.ndarray:
    # X'X + lambda I is symmetric positive definite: its inverse through Cholesky (LAPACK potrf +
    # potri) costs ~N^3 against ~2.7 N^3 for a general inverse. In float32 it took 1.2 s against
    # 9.6 s in float64 at 6,000 items here, with every weight within 3e-7 of float64's and the same
    # top-20 neighbours (Online Retail: within 1.3e-6, 99.997% of them the same; the rest near-ties).
    for potrf, potri, dtype in ((lapack.spotrf, lapack.spotri, np.float32), (lapack.dpotrf, lapack.dpotri, np.float64)):
        g = gram.astype(dtype)
        g[np.diag_indices_from(g)] += lam
        chol, info = potrf(g, lower=True, clean=True, overwrite_a=True)  # clean: the upper triangle is 0
        if info == 0:
            p, info = potri(chol, lower=True, overwrite_c=True)  # the inverse's lower triangle, the upper still 0
        if info == 0:
            p += p.T  # symmetric, the diagonal twice (np.tril to mirror it took 4.6 s at 10,000 items)
            p[np.diag_indices_from(p)] /= 2
            break
    else:  # not positive definite in floating point: the general inverse
        p = np.linalg.inv(gram + lam * np.eye(len(gram)))
    p /= -np.diag(p).copy()[None, :]
    np.fill_diagonal(p, 0.0)
    return p.astype(np.float32, copy=False)


def _holdout_score(b: np.ndarray, x_rest: sparse.csr_matrix, held: np.ndarray) -> float:
    """Mean 1 / log2(2 + rank) of each holdout shopper's held-out item among the items they did
    not have (NDCG with one relevant item, no cutoff: smooth enough to compare lambdas)."""
    s = np.asarray(x_rest @ b)
    s[x_rest.nonzero()] = -np.inf
    target = s[np.arange(len(held)), held]
    rank = (s > target[:, None]).sum(axis=1)
    return float(np.mean(1.0 / np.log2(2.0 + rank)))


def fit(pairs: pl.DataFrame, p: FeatureParams, seed: int = 0) -> EaseModel | None:
    """EASE on distinct (user, item, ts) pairs; None when disabled or fewer than 2 items qualify."""
    if p.ease_max_items == 0 or pairs.is_empty():
        return None
    n_users = pairs.group_by(S.ITEM_ID).agg(pl.len().alias("n")).sort(["n", S.ITEM_ID], descending=[True, False])
    item_ids = n_users.head(p.ease_max_items).get_column(S.ITEM_ID).to_list()
    if len(item_ids) < 2:
        return None
    item_row = {i: r for r, i in enumerate(item_ids)}
    x, kept = _matrix(pairs, item_row)
    gram = (x.T @ x).toarray().astype(np.float64)
    scale = float(np.mean(np.diag(gram)))
    info: dict = {"items": len(item_ids), "users": x.shape[0], "pairs": int(x.nnz)}
    if p.ease_lambda is not None:
        lam = float(p.ease_lambda)
        info["lambda_chosen_by"] = "features.ease_lambda"
    else:
        lam, info["lambda_holdout"] = _choose_lambda(kept, x, gram, scale, seed)
        info["lambda_chosen_by"] = "leave-newest-out holdout" if info["lambda_holdout"] else "default (no holdout shoppers)"
    info["lambda"] = lam
    return EaseModel(item_ids, _weights(gram, lam), info)


def grid_search(grid: tuple[float, ...], score: Callable[[float], float]) -> tuple[float, dict[float, float]]:
    """(the best of the sorted `grid` by `score`, every score computed): its middle three first, then
    a step outward while the best so far is at an edge of what was tried, so the grid's best wherever
    the score rises then falls along it, in fewer calls. Ties go to the larger value."""
    mid = len(grid) // 2
    scores = {m: score(m) for m in grid[max(0, mid - 1): mid + 2]}
    while True:
        best = max(scores, key=lambda m: (round(scores[m], 6), m))
        k = grid.index(best)
        edge = [grid[j] for j in (k - 1, k + 1) if 0 <= j < len(grid) and grid[j] not in scores]
        if not edge:
            return best, scores
        scores[edge[0]] = score(edge[0])


def _choose_lambda(kept: pl.DataFrame, x: sparse.csr_matrix, gram: np.ndarray, scale: float,
                   seed: int) -> tuple[float, dict]:
    """The grid's lambda whose B (fitted without each holdout shopper's newest item) ranks that
    item best; ties go to the larger lambda (the smoother model). Each fit costs N^3 (about 9 s at
    10,000 items on 2 CPUs in float32, 45 s in float64), so the search starts from the grid's middle three
    and steps outward only while the best is at an edge of what it tried: the grid's best wherever
    the score rises then falls along it (as on every log measured), in 3 or 4 fits."""
    default = LAMBDA_GRID[2] * scale
    counts = np.diff(x.indptr)
    eligible = np.flatnonzero(counts >= MIN_HISTORY_FOR_HOLDOUT)
    if not len(eligible):
        return default, {}
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(eligible, min(HOLDOUT_USERS, len(eligible)), replace=False))
    newest = (kept.filter(pl.col("__u").is_in(users.tolist()))
              .sort(["__u", S.TS, S.ITEM_ID], descending=[False, True, False])
              .group_by("__u", maintain_order=True).first())
    held = newest.get_column("__i").to_numpy()
    x_rest = x[newest.get_column("__u").to_numpy()].tolil()
    x_rest[np.arange(len(held)), held] = 0
    x_rest = x_rest.tocsr()
    x_rest.eliminate_zeros()
    # Remove the held-out pairs from X'X: each is one shopper's item, so X'X loses their outer products.
    g = gram.copy()
    x_h = x[newest.get_column("__u").to_numpy()]
    lost = (x_h.T @ x_h - x_rest.T @ x_rest).tocoo()  # sparse: two dense N x N copies took 6 s at 10,000 items
    g[lost.row, lost.col] -= lost.data
    best, scores = grid_search(LAMBDA_GRID, lambda m: _holdout_score(_weights(g, m * scale), x_rest, held))
    return best * scale, {"shoppers": len(held), "mean_users_per_item": round(scale, 4),
                          "score_by_multiple": {f"{m:g}": round(scores[m], 6) for m in LAMBDA_GRID if m in scores},
                          "multiple": best}


def top_neighbours(model: EaseModel, top_m: int) -> pl.DataFrame:
    """(item_a, item_b, score, rank): each item's top_m largest positive weights B[a, b], ties by item_b."""
    b = model.weights
    n = len(model.item_ids)
    m = min(top_m, n - 1)
    if m < 1:
        return pl.DataFrame(schema={S.ITEM_A: pl.String, S.ITEM_B: pl.String, S.SCORE: pl.Float64, S.RANK: pl.Int32})
    ids = np.array(model.item_ids, dtype=object)
    # argpartition then a stable sort by (-score, item id) for a deterministic table
    part = np.argpartition(-b, m - 1, axis=1)[:, :m] if m < n else np.tile(np.arange(n), (n, 1))
    a_idx = np.repeat(np.arange(n), part.shape[1])
    b_idx = part.ravel()
    df = pl.DataFrame({S.ITEM_A: ids[a_idx].tolist(), S.ITEM_B: ids[b_idx].tolist(),
                       S.SCORE: b[a_idx, b_idx].astype(np.float64)})
    df = (df.filter((pl.col(S.SCORE) > 0) & (pl.col(S.ITEM_A) != pl.col(S.ITEM_B)))
          .sort([S.ITEM_A, S.SCORE, S.ITEM_B], descending=[False, True, False])
          .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(S.ITEM_A).alias(S.RANK))
          .filter(pl.col(S.RANK) <= top_m))
    return df.select(S.ITEM_A, S.ITEM_B, S.SCORE, S.RANK)


def ease_table(pairs: pl.DataFrame, p: FeatureParams) -> tuple[pl.DataFrame | None, dict]:
    """The neighbour table and the fit's info ({} and None when disabled or too little data)."""
    model = fit(pairs, p)
    if model is None:
        return None, {"enabled": p.ease_max_items > 0, "fitted": False}
    return top_neighbours(model, p.ease_top_m), {"enabled": True, "fitted": True, **model.info}
