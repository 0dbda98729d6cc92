"""Ranking inside the Retriever replica: features/retrieval/ranking.py's feature function, scored by
the learned ranker (features/models/learned_ranker.py, a LightGBM text model from jobs.train_ranker)
for the modes it was trained on and by the hand-set weights otherwise (and when no ranker version
exists).

Not a deployment of its own: a separate Ranker replica cost one more Serve hop per request (about
4 ms of CPU on each side on 2 cores, plus a second copy of the catalog), more than ranking itself.
The Retriever replica ranks its own candidates on the catalog it already holds
(bench/serve_latency.py measures the hops; docs/serving.md).
"""

from __future__ import annotations

import logging

import numpy as np

from features.models.learned_ranker import LearnedRanker, WithFallback
from features.retrieval.live import LiveCatalog
from features.retrieval.ranking import HandWeights, RankContext, rank_candidates
from serving.settings import Resolved, ServingConfig

log = logging.getLogger("ray.serve")


def load_scorer(cfg: ServingConfig, res: Resolved) -> WithFallback:
    """The learned model of res.ranker_dir with the configured hand weights as the fallback (for
    modes it was not trained on, and for the shoppers not in res.ranker_segments). A model that
    cannot be loaded fails the deployment (an explicit version must work)."""
    learned = LearnedRanker.load(res.ranker_dir, explanations=cfg.ranker.explanations) if res.ranker_dir else None
    return WithFallback(learned, search_weights(cfg, res), res.ranker_segments)


def search_weights(cfg: ServingConfig, res: Resolved) -> HandWeights:
    """The configured hand weights, with the search ranking's weights that the served search version
    fitted on the shop's judgments (jobs.train_search: the match weights, where they won out of fold)."""
    if not res.search_dir:
        return cfg.ranker.weights
    from dataclasses import replace

    from features.models.query_adapter import read_search_version

    fitted = read_search_version(res.search_dir)[1].get("search_weights") or {}
    return replace(cfg.ranker.weights, search={**cfg.ranker.weights.search, **fitted}) if fitted else cfg.ranker.weights


class Ranker:
    """Top-k of candidate ids on a live catalog, as result dicts (item fields, score, reasons)."""

    def __init__(self, cfg: ServingConfig, res: Resolved, live: LiveCatalog) -> None:
        self.live = live
        self.scorer = load_scorer(cfg, res)
        log.info("ranker: search by %s, recommend by %s", self.scorer.describe("search"), self.scorer.describe("recommend"))

    def rank(self, ctx: RankContext, item_ids: list[str], k: int, bm25: np.ndarray | None = None,
             diversity: float = 0.0, explain: bool = True) -> list[dict]:
        cat = self.live.catalog
        ranked = rank_candidates(ctx, item_ids, cat, self.scorer, k, bm25, diversity, explain)
        return [{**cat.describe(r.row), "score": round(r.score, 6), "reasons": r.reasons} for r in ranked]

    def info(self) -> dict:
        return {"search": self.scorer.describe("search"), "recommend": self.scorer.describe("recommend")}
