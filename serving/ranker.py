"""Ranker deployment: features/ranking.py's feature function and scorer over retrieved candidates."""

from __future__ import annotations

import numpy as np
from ray import serve

from features.ranking import RankContext, rank_candidates
from serving.retriever import open_live_catalog
from serving.settings import Resolved, ServingConfig


@serve.deployment(name="Ranker")
class Ranker:
    def __init__(self, cfg: ServingConfig, res: Resolved) -> None:
        self.live = open_live_catalog(cfg, res, lexical=False)
        self.weights = cfg.ranker

    def rank(self, ctx: RankContext, item_ids: list[str], k: int, bm25: np.ndarray | None = None,
             diversity: float = 0.0) -> list[dict]:
        """Top-k of the candidates as result dicts (item fields, score, reasons)."""
        self.live.sync()
        cat = self.live.catalog
        ranked = rank_candidates(ctx, item_ids, cat, self.weights, k, bm25, diversity)
        return [{**cat.describe(r.row), "score": round(r.score, 6), "reasons": r.reasons} for r in ranked]
