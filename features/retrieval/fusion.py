"""The ONE fusion of dense (embedding) and lexical (BM25) retrieval scores, used by serving's
search (features/retrieval/live.py) and by the offline evaluation, so the evaluation's hybrid row
measures exactly what serving does."""

from __future__ import annotations

from typing import Literal

import numpy as np

Fusion = Literal["rrf", "weighted"]


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
