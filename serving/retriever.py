"""Retrieval and ranking: FAISS ANN + BM25 fused (search) and recommend candidates, ranked in the
same process (serving/ranker.py); similar items, upserts and removals.

`RetrieverCore` is the plain class. It runs as the Retriever deployment (`Retriever`, where item
upserts are logged) and, with retriever_placement ingress (the default), also inside each Ingress
replica for the reads: a Serve hop cost 3-8 ms and CPU on both sides on 2 cores, as much as
retrieving and ranking a search (bench/results/serve_placement/, docs/benchmarks.md).
Every copy keeps current from the shared item log (`LiveCatalog.sync` before each read), so an
item acknowledged by PUT /v1/items is searchable through any replica at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import numpy as np
from ray import serve

from features import artifacts as A
from features.errors import UnknownItem
from features.profiles.seed import seed_profile
from features.retrieval.catalog import ItemUpdate, load_catalog
from features.retrieval.live import Filters, LiveCatalog
from features.retrieval.ranking import RankContext, attach_als, attach_ease, attach_sequence, context_for
from serving.http import quiet_client_errors
from serving.ranker import Ranker
from serving.settings import Resolved, ServingConfig


def open_live_catalog(cfg: ServingConfig, res: Resolved, lexical: bool) -> LiveCatalog:
    """The catalog of the resolved versions plus the shared item log (every deployment uses this)."""
    from dataclasses import replace
    from pathlib import Path

    catalog, index = load_catalog(res.features_dir, res.index_dir)
    if res.sequence_dir:
        from features.models.sequence_io import attach

        attach(catalog, res.sequence_dir)
    retriever = replace(cfg.retriever, lexical=lexical)
    if res.search_dir:  # the fusion fitted on the shop's judgments (jobs.train_search)
        from features.models.query_adapter import read_search_version

        f = read_search_version(res.search_dir)[1]["fusion"]
        retriever = replace(retriever, fusion=f["method"], rrf_k=int(f["rrf_k"]), ann_weight=float(f["ann_weight"]))
    # The batch catalog is as fresh as the features version that read it: older upserts of its items yield.
    created = A.read_manifest(res.features_dir).get("created_at")
    batch_time = dt.datetime.fromisoformat(created).timestamp() if created else None
    live = LiveCatalog(catalog, index, Path(res.state_dir) / "items", retriever, fsync=cfg.profiles.fsync,
                       batch_time=batch_time, encoder_id=index_encoder_id(res.index_dir))
    if live.n_other_encoder:
        log.warning("%d items upserted through the API carry vectors of another encoder than this index's; they are "
                    "found by their text and fields, but their vectors are off until they are PUT again (or the "
                    "shop's export lists them for the next batch run)", live.n_other_encoder)
    return live


def index_encoder_id(index_dir: str) -> str:
    """Which encoder made an index version's vectors: a fine-tuned checkpoint's weights hash, or
    the zero-shot model's folder (the bundled MiniLM when unset)."""
    m = A.read_manifest(index_dir)
    enc = m.get("inputs", {}).get("encoder", {})
    if enc.get("weights_sha256"):
        return f"sha256:{enc['weights_sha256']}"
    return f"zero-shot:{m.get('config', {}).get('zero_shot', {}).get('model_dir') or 'bundled'}"


log = logging.getLogger("ray.serve")


def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1e3, 2)


class RetrieverCore:
    def __init__(self, cfg: ServingConfig, res: Resolved) -> None:
        self.live = open_live_catalog(cfg, res, lexical=cfg.retriever.lexical)
        self.ranker = Ranker(cfg, res, self.live)
        self.profile_params = cfg.profiles.params
        quiet_client_errors()  # unknown ids are answered as 404/422, not logged as failures
        self.warm_up_s = self.warm_up()

    def warm_up(self) -> float | None:
        """Answer one search and two recommendations (a cold start, and a shopper who bought and
        viewed catalog items) on this copy and throw the answers away, so that the first real
        requests after a replica starts do not pay for first calls (the behaviour model's first
        forward pass, the learned ranker's first explanation). Writes nothing. Seconds taken, or
        None when the catalog is empty or a read failed (logged: the replica still starts, and the
        same request will fail with its own error)."""
        cat = self.live.catalog
        if not len(cat):
            return None
        t0 = time.perf_counter()
        now = time.time()
        p = self.profile_params
        items = list(cat.item_ids[:3])
        shopper = seed_profile("warm-up", items, ["purchase", "view", "view"][: len(items)],
                               [now - 60.0 * (i + 1) for i in range(len(items))], [], cat.lookup, p)
        try:
            self.search(context_for("search", None, now, p, cat.title[0], cat.vectors[0]), None, frozenset(), 10)
            self.recommend(context_for("recommend", None, now, p), None, frozenset(), 10)
            ctx = context_for("recommend", shopper, now, p)
            self.recommend(ctx, None, ctx.purchased, 10)
        except Exception as e:  # noqa: BLE001 - a warm-up never stops a replica; the request will say why
            log.warning("warm-up read failed (%s: %s); the replica starts anyway", type(e).__name__, e)
            return None
        return round(time.perf_counter() - t0, 3)

    def search(self, ctx: RankContext, filters: Filters | None, exclude: frozenset[str], k: int,
               diversity: float = 0.0, explain: bool = True) -> tuple[list[dict], dict[str, float]]:
        """(top-k result dicts, {"retrieve": ms, "rank": ms}); ctx carries the query and its vector."""
        self.live.sync()
        t0 = time.perf_counter()
        ids, _, bm25 = self.live.search(ctx.query or "", ctx.query_emb, filters, exclude)
        t1 = time.perf_counter()
        results = self.ranker.rank(ctx, ids, k, bm25, diversity, explain)
        return results, {"retrieve": _ms(t0, t1), "rank": _ms(t1, time.perf_counter())}

    def recommend(self, ctx: RankContext, filters: Filters | None, exclude: frozenset[str], k: int,
                  diversity: float = 0.0, explain: bool = True) -> tuple[list[dict], dict[str, float]]:
        """(top-k result dicts, {"retrieve": ms, "rank": ms}); UnknownItem when the context item is
        not in the catalog. The behaviour model's user vector and the EASE scores are computed once, for both."""
        self.live.sync()
        t0 = time.perf_counter()
        if ctx.context_item is not None and ctx.context_item not in self.live.catalog.row:
            raise UnknownItem(f"context_item_id: unknown item {ctx.context_item!r}", "context_item_id")
        ctx.seq_vector = attach_sequence(ctx, self.live.catalog)
        ids = self.live.recommend(ctx.user_vector(), [i for i, _ in ctx.recent_items], ctx.context_item, filters,
                                  exclude, ctx.seq_vector, attach_ease(ctx, self.live.catalog),
                                  attach_als(ctx, self.live.catalog))
        t1 = time.perf_counter()
        results = self.ranker.rank(ctx, ids, k, None, diversity, explain)
        return results, {"retrieve": _ms(t0, t1), "rank": _ms(t1, time.perf_counter())}

    def upsert(self, item: ItemUpdate, vector: np.ndarray) -> bool:
        """Log and apply; returns True when the item is new (CatalogFull past retriever.max_items)."""
        _, created = self.live.upsert(item, vector)
        return created

    def known_vector(self, item: ItemUpdate) -> np.ndarray | None:
        """The item's vector when its text is unchanged (features/retrieval/live.py), else None."""
        self.live.sync()
        return self.live.known_vector(item)

    def remove(self, item_id: str) -> bool:
        """Log and apply the item's removal; False when there is no such item."""
        return self.live.remove(item_id)

    def similar(self, item_id: str, k: int) -> list[dict]:
        """Nearest items by embedding (UnknownItem when there is no such item, or it was removed);
        the reason names the item."""
        self.live.sync()
        cat = self.live.catalog
        row = cat.row.get(item_id)
        if row is None or self.live.is_removed(item_id):
            raise UnknownItem(f"item_id: {'removed' if row is not None else 'unknown'} item {item_id!r}", "item_id")
        scores, rows = self.live.ann(cat.vectors[row], k + 1)
        out = []
        for s, r in zip(scores, rows):
            if int(r) != row and len(out) < k:
                out.append({**cat.describe(int(r)), "score": round(float(s), 6),
                            "reasons": [f"similar to {cat.title[row]}"]})
        return out

    def info(self) -> dict:
        self.live.sync()
        return {"items": len(self.live.catalog) - self.live.n_removed, "upserted": self.live.n_upserted,
                "upserted_new_text": self.live.n_changed, "upserted_by_another_encoder": self.live.n_other_encoder,
                "removed": self.live.n_removed, "upserts_older_than_batch": self.live.superseded,
                "index_type": self.live.index.kind, "ranker": self.ranker.info(), "warm_up_s": self.warm_up_s}


Retriever = serve.deployment(name="Retriever")(RetrieverCore)
