"""The ONE fusion of dense (embedding) and lexical (BM25) retrieval scores, used by serving's
search (features/retrieval/live.py) and by the offline evaluation, so the evaluation's hybrid row
measures exactly what serving does; and `fusion_grid`, the fusions a shop's judged queries choose
from (features/evaluation/search.py's `choose_fusion`, for jobs.train_search and the evaluation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from features import metrics as M

Fusion = Literal["rrf", "weighted"]
RRF_KS = (5, 10, 20, 40, 60, 100, 200)
ANN_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class FusionParams:
    method: Fusion = "rrf"
    rrf_k: int = 60
    ann_weight: float = 0.5

    def describe(self) -> str:
        return f"rrf, k={self.rrf_k}" if self.method == "rrf" else f"weighted, ann_weight={self.ann_weight}"


def fuse(cos: np.ndarray, bm25: np.ndarray, method: Fusion = "rrf", rrf_k: int = 60, ann_weight: float = 0.5,
         in_dense: np.ndarray | None = None, in_lexical: np.ndarray | None = None) -> np.ndarray:
    """Fused scores (C,) of C candidates from their cosine similarity `cos` (C,) and raw BM25 `bm25` (C,).

    rrf: reciprocal-rank fusion, sum over the lists a candidate is in of 1 / (rrf_k + rank), rank
      from 1: the dense list (the candidates with `in_dense`, default all, ordered by cos) and the
      lexical list (those with `in_lexical`, default BM25 > 0, ordered by BM25): serving passes which
      candidates each retriever returned. Ties keep the candidates' order.
    weighted: ann_weight * cos + (1 - ann_weight) * bm25 / max(bm25).
    """
    cos = np.asarray(cos, np.float64)
    bm25 = np.asarray(bm25, np.float64)
    if cos.shape != bm25.shape:
        raise ValueError(f"cos and bm25 must have the same shape, got {cos.shape} and {bm25.shape}")
    if method == "weighted":
        top = float(bm25.max()) if len(bm25) and bm25.max() > 0 else 1.0
        return ann_weight * cos + (1.0 - ann_weight) * bm25 / top
    if method != "rrf":
        raise ValueError(f"retriever.fusion: {method!r}; allowed: 'rrf', 'weighted'")
    fused = np.zeros(len(cos))
    dense = np.ones(len(cos), bool) if in_dense is None else np.asarray(in_dense, bool)
    lexical = bm25 > 0 if in_lexical is None else np.asarray(in_lexical, bool)
    for members, scores in ((np.flatnonzero(dense), cos), (np.flatnonzero(lexical), bm25)):
        order = members[np.argsort(-scores[members], kind="stable")]
        fused[order] += 1.0 / (rrf_k + np.arange(1, len(order) + 1))
    return fused


@dataclass(frozen=True)
class Pool:
    """One judged query's retrieval pool: the candidates' cos, BM25, list membership and gains
    (0 for unjudged), and the gains of all its judged items (for the ideal ordering)."""

    cos: np.ndarray
    bm25: np.ndarray
    in_dense: np.ndarray
    in_lexical: np.ndarray
    gains: np.ndarray
    ideal: np.ndarray


def fusion_ndcg_per_query(pools: list[Pool], p: FusionParams, k: int = 10) -> np.ndarray:
    """nDCG@k of each query's candidates ordered by fusion `p` (NaN without a relevant item)."""
    ranked = []
    for q in pools:
        s = fuse(q.cos, q.bm25, p.method, p.rrf_k, p.ann_weight, q.in_dense, q.in_lexical)
        ranked.append(q.gains[np.argsort(-s, kind="stable")[:k]])
    return M.graded_ndcg_per_query(ranked, [q.ideal for q in pools], k)


def fusion_ndcg(pools: list[Pool], p: FusionParams, k: int = 10) -> float:
    """Mean nDCG@k of the queries' candidates ordered by fusion `p`."""
    return M.nanmean(fusion_ndcg_per_query(pools, p, k)) if pools else 0.0


def fusion_grid(default: FusionParams = FusionParams()) -> list[FusionParams]:
    """The fusions a fit tries, `default` first: RRF with k in RRF_KS, weighted with ANN_WEIGHTS."""
    grid = [default] + [FusionParams("rrf", rk) for rk in RRF_KS] + [FusionParams("weighted", ann_weight=w) for w in ANN_WEIGHTS]
    seen: dict[str, FusionParams] = {}
    for p in grid:
        seen.setdefault(p.describe(), p)  # the default stands for the grid point it equals
    return list(seen.values())
