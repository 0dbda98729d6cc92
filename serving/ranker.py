"""Ranker deployment: features/retrieval/ranking.py's feature function, scored by the learned ranker
(features/models/learned_ranker.py, a LightGBM text model from jobs.train_ranker) for the modes it was
trained on and by the hand-set weights otherwise (and when no ranker version exists)."""

from __future__ import annotations

import logging

import numpy as np
from ray import serve

from features.models.learned_ranker import LearnedRanker, WithFallback
from features.retrieval.ranking import RankContext, rank_candidates
from serving.retriever import open_live_catalog
from serving.settings import Resolved, ServingConfig

log = logging.getLogger("ray.serve")


def load_scorer(cfg: ServingConfig, res: Resolved) -> WithFallback:
    """The learned model of res.ranker_dir with the configured hand weights as the fallback.
    A model that cannot be loaded fails the deployment (an explicit version must work)."""
    learned = LearnedRanker.load(res.ranker_dir) if res.ranker_dir else None
    return WithFallback(learned, cfg.ranker.weights)


@serve.deployment(name="Ranker")
class Ranker:
    def __init__(self, cfg: ServingConfig, res: Resolved) -> None:
        self.live = open_live_catalog(cfg, res, lexical=False)
        self.scorer = load_scorer(cfg, res)
        log.info("ranker: search by %s, recommend by %s", self.scorer.describe("search"), self.scorer.describe("recommend"))

    def rank(self, ctx: RankContext, item_ids: list[str], k: int, bm25: np.ndarray | None = None,
             diversity: float = 0.0) -> list[dict]:
        """Top-k of the candidates as result dicts (item fields, score, reasons)."""
        self.live.sync()
        cat = self.live.catalog
        ranked = rank_candidates(ctx, item_ids, cat, self.scorer, k, bm25, diversity)
        return [{**cat.describe(r.row), "score": round(r.score, 6), "reasons": r.reasons} for r in ranked]

    def info(self) -> dict:
        return {"search": self.scorer.describe("search"), "recommend": self.scorer.describe("recommend")}
