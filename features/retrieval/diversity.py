"""Diversity for ranked lists: maximal marginal relevance over the candidates' unit vectors."""

from __future__ import annotations

import numpy as np


def mmr(scores: np.ndarray, vecs: np.ndarray, k: int, diversity: float) -> np.ndarray:
    """Maximal marginal relevance: indices of k picks from candidates with `scores` (C,) and unit
    vectors (C, d). diversity 0 keeps the score order; 1 picks only for dissimilarity.
    Relevance is min-max scaled to [0, 1] so the trade-off does not depend on the score scale."""
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    c = len(scores)
    k = min(k, c)
    order = np.argsort(-scores, kind="stable")
    if diversity == 0.0 or k <= 1:
        return order[:k]
    span = float(scores.max() - scores.min())
    rel = (scores - scores.min()) / span if span > 0 else np.ones(c)
    sims = vecs @ vecs.T  # (C, C)
    picked = [int(order[0])]
    max_sim = sims[picked[0]].copy()
    free = np.ones(c, dtype=bool)
    free[picked[0]] = False
    while len(picked) < k:
        value = np.where(free, (1 - diversity) * rel - diversity * max_sim, -np.inf)
        j = int(np.argmax(value))
        picked.append(j)
        free[j] = False
        max_sim = np.maximum(max_sim, sims[j])
    return np.array(picked, dtype=np.int64)
