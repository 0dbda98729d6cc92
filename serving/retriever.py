"""Retriever deployment: FAISS ANN + BM25 fused (search), recommend candidates, similar items, upserts."""

from __future__ import annotations

import numpy as np
from ray import serve

from features.errors import UnknownItem
from features.retrieval.catalog import ItemUpdate, load_catalog
from features.retrieval.live import Filters, LiveCatalog
from features.retrieval.ranking import RankContext, attach_sequence
from serving.http import quiet_client_errors
from serving.settings import Resolved, ServingConfig


def open_live_catalog(cfg: ServingConfig, res: Resolved, lexical: bool) -> LiveCatalog:
    """The catalog of the resolved versions plus the shared item log (every deployment uses this)."""
    from dataclasses import replace
    from pathlib import Path

    catalog, index = load_catalog(res.features_dir, res.index_dir)
    if res.sequence_dir:
        from features.models.sequence_io import attach

        attach(catalog, res.sequence_dir)
    return LiveCatalog(catalog, index, Path(res.state_dir) / "items", replace(cfg.retriever, lexical=lexical),
                       fsync=cfg.profiles.fsync)


@serve.deployment(name="Retriever")
class Retriever:
    def __init__(self, cfg: ServingConfig, res: Resolved) -> None:
        self.live = open_live_catalog(cfg, res, lexical=cfg.retriever.lexical)
        quiet_client_errors()  # unknown ids are answered as 404/422, not logged as failures

    def search(self, query: str, query_emb: np.ndarray, filters: Filters | None,
               exclude: frozenset[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        self.live.sync()
        return self.live.search(query, query_emb, filters, exclude)

    def recommend(self, ctx: RankContext, filters: Filters | None, exclude: frozenset[str]
                  ) -> tuple[list[str], np.ndarray | None]:
        """(candidate ids, the behaviour model's user vector or None); UnknownItem when the
        context item is not in the catalog. The vector travels on to the Ranker (computed once)."""
        self.live.sync()
        if ctx.context_item is not None and ctx.context_item not in self.live.catalog.row:
            raise UnknownItem(f"context_item_id: unknown item {ctx.context_item!r}", "context_item_id")
        seq_vec = attach_sequence(ctx, self.live.catalog)
        ids = self.live.recommend(ctx.user_vector(), [i for i, _ in ctx.recent_items], ctx.context_item, filters,
                                  exclude, seq_vec)
        return ids, seq_vec

    def upsert(self, item: ItemUpdate, vector: np.ndarray) -> bool:
        """Log and apply; returns True when the item is new (CatalogFull past retriever.max_items)."""
        _, created = self.live.upsert(item, vector)
        return created

    def similar(self, item_id: str, k: int) -> list[dict]:
        """Nearest items by embedding (UnknownItem when there is no such item); the reason names the item."""
        self.live.sync()
        cat = self.live.catalog
        row = cat.row.get(item_id)
        if row is None:
            raise UnknownItem(f"item_id: unknown item {item_id!r}", "item_id")
        scores, rows = self.live.ann(cat.vectors[row], k + 1)
        out = []
        for s, r in zip(scores, rows):
            if int(r) != row and len(out) < k:
                out.append({**cat.describe(int(r)), "score": round(float(s), 6),
                            "reasons": [f"similar to {cat.title[row]}"]})
        return out

    def info(self) -> dict:
        self.live.sync()
        return {"items": len(self.live.catalog), "upserted": self.live.n_changed,
                "index_type": self.live.index.kind}
