"""Candidate retrieval: FAISS ANN plus BM25 over item text, fused; recommend-time candidate sources.

`LiveCatalog` is the catalog as serving sees it: the versioned artifacts plus every item upserted since, read from a
shared item log (a RecordLog), so all replicas on a node apply the same upserts in the same order and an upserted item
is searchable on the very next request. The FAISS index is never rebuilt online: an upserted item whose text changed
(so its vector did) is scored exactly (numpy) next to the ANN results, and its stale vector in the index is skipped
inside FAISS, as removed items are; an upsert that leaves the text as it was (a price or stock change, most of a
shop's writes) keeps the index's vector, is not encoded, and costs searches nothing. Over a newer batch the latest
write wins: an upsert written before the batch read its catalog, of an item the batch lists, is superseded (kept in
the log, not applied); upserts of items the batch does not list always apply. A removed item (a tombstone in the same
log) is left out of every candidate source until it is upserted again; its row, vector and history stay, so shoppers'
past events and a product page's context still resolve.

Filters (category prefix, price range, in stock) switch retrieval to an exact scan of the items that pass: O(N d) per
request (about 1 ms for 4k items, tens of ms at 1M). Per-request exclusions (a buyer's purchases) do not: FAISS skips
them, as it skips removed items.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features import metrics as M
from features.errors import CatalogFull
from features.profiles.eventlog import RecordLog
from features.profiles.events import decode_vector, encode_vector
from features.retrieval.catalog import Catalog, ItemUpdate
from features.retrieval.fusion import Fusion, FusionParams, fuse
from features.retrieval.index import ItemIndex
from features.retrieval.lexical import BM25, DEFAULT_FIELD_WEIGHTS, FIELDS, Analyzer

_LEAST = dict(num_candidates=1, rrf_k=1, max_items=1, cooc_candidates=0, popular_candidates=0, sequence_candidates=0,
              ease_candidates=0, als_candidates=0)  # the smallest allowed value of each count
COMPACT_SLACK = 1000  # the item log is compacted once it holds this many records more than 2 per changed or removed item


@dataclass(frozen=True)
class RetrievalConfig:
    num_candidates: int = 200  # candidates handed to the ranker
    lexical: bool = True  # BM25 next to the ANN for search
    fusion: Fusion = "rrf"  # rrf: reciprocal rank fusion; weighted: ann_weight * cos + (1 - ann_weight) * bm25/max
    rrf_k: int = 60
    ann_weight: float = 0.5
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    # BM25F field weights (title, brand, category, description; a field left out is not searched)
    field_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FIELD_WEIGHTS))
    stemmer: str = "english"  # a Snowball language for BM25's terms, or "none" (plural fold only)
    typo_tolerance: bool = True  # a query word no item holds matches the closest word (1-2 edits)
    cooc_candidates: int = 100  # recommend: co-occurrence neighbours of the context and recent items
    popular_candidates: int = 50  # recommend: the most popular items (cold start)
    sequence_candidates: int = 100  # recommend: the behaviour model's top items (when one is loaded)
    ease_candidates: int = 100  # recommend: the top items by EASE score from the shopper's history
    als_candidates: int = 0  # recommend: the top items by ALS score of the shopper's history (0: none)
    max_items: int = 2_000_000  # PUT /v1/items may not grow the catalog past this (409); changes always allowed

    def __post_init__(self) -> None:
        for k, least in _LEAST.items():  # (a negative source size would slice candidates off the end)
            if not getattr(self, k) >= least:
                raise ValueError(f"retriever.{k}: {getattr(self, k)!r}; allowed: >= {least}{' (0: none)' * (not least)}")
        if not 0.0 <= self.ann_weight <= 1.0:
            raise ValueError(f"retriever.ann_weight must be in [0, 1], got {self.ann_weight}")
        unknown = sorted(set(self.field_weights) - set(FIELDS))
        if unknown or not self.field_weights:
            raise ValueError(f"retriever.field_weights: unknown field(s) {unknown or '(none given)'}; allowed: {', '.join(FIELDS)}")
        bad = {f: w for f, w in self.field_weights.items() if not w > 0}
        if bad:
            raise ValueError(f"retriever.field_weights: weights must be > 0, got {bad}")
        Analyzer(self.stemmer)  # raises on an unknown language, naming the allowed ones

    def fusion_params(self) -> FusionParams:
        return FusionParams(self.fusion, self.rrf_k, self.ann_weight)

    def lexical_index(self, docs: list) -> BM25:
        """A BM25F index over `docs` (field mappings, see `item_fields`) with these settings."""
        return BM25.build(docs, self.bm25_k1, self.bm25_b, fields=self.field_weights, stemmer=self.stemmer,
                          typo_tolerance=self.typo_tolerance)


@dataclass(frozen=True)
class Filters:
    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    in_stock: bool | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.category, self.price_min, self.price_max, self.in_stock))


class LiveCatalog:
    """Catalog + ANN index + BM25, kept current from the shared item log (see module doc)."""

    def __init__(self, catalog: Catalog, index: ItemIndex, item_log_dir: str | Path | None,
                 cfg: RetrievalConfig = RetrievalConfig(), fsync: bool = True, batch_time: float | None = None,
                 encoder_id: str | None = None) -> None:
        """`batch_time`: when the batch catalog was read (epoch seconds; the features version's
        creation): an upsert written before it, of an item the batch lists, is superseded by the
        batch's fresher fields (the latest write wins); None applies every upsert. `encoder_id`:
        the encoder of the index's vectors, written into each upsert; a logged vector of another
        encoder (an older version's) is counted in `n_other_encoder` until the item is PUT again."""
        if list(index.item_ids) != catalog.item_ids[: len(index.item_ids)]:
            raise ValueError("the index and the catalog disagree on item order")
        self.catalog = catalog
        self.index = index
        self.cfg = cfg
        self.n_indexed = len(index.item_ids)
        self.batch_time = batch_time
        self.n_batch = len(catalog)  # rows of the batch catalog (upserts append after them)
        self.superseded = 0  # logged upserts the batch catalog is fresher than
        self._changed: set[int] = set()  # rows whose vector is not (or no longer) the index's
        self._upserted: set[int] = set()  # rows an applied upsert changed (any field)
        self._removed: set[int] = set()  # rows removed by the shop (never a candidate)
        self.encoder_id = encoder_id
        self._other_encoder: set[int] = set()  # rows whose vector came from another encoder than the index's
        self._derived_arrays: dict[str, np.ndarray] | None = None  # see _derived; None after a write
        self.bm25 = cfg.lexical_index([catalog.fields(r) for r in range(len(catalog))]) if cfg.lexical else None
        if self.bm25 is not None:
            catalog.analyzer = self.bm25.analyzer  # the ranker's title/text match features use the same terms
        self.log = RecordLog(item_log_dir, fsync=fsync) if item_log_dir is not None else None
        self.log_records = 0  # records in the item log, as far as this process knows
        if self.log is not None:
            for rec in self.log.records_on_open():
                self._apply(rec)

    @property
    def n_changed(self) -> int:
        """Items whose vector is not the index's: new, or upserted with a new text."""
        return len(self._changed)

    @property
    def n_upserted(self) -> int:
        """Items upserted since the batch (new, changed text, or other fields only)."""
        return len(self._upserted)

    @property
    def n_other_encoder(self) -> int:
        """Upserted items whose logged vector is another encoder's (written before this version's)."""
        return len(self._other_encoder)

    @property
    def n_removed(self) -> int:  # items removed (and not upserted since)
        return len(self._removed)

    def is_removed(self, item_id: str) -> bool:
        return self.catalog.row.get(item_id, -1) in self._removed

    def _set_removed(self, row: int, removed: bool) -> None:
        (self._removed.add if removed else self._removed.discard)(row)
        self._derived_arrays = None

    def _derived(self) -> dict[str, np.ndarray]:
        """Arrays every search reads, rebuilt on the first search after a write: the removed rows,
        the rows FAISS skips (removed, and the stale index vectors of items with a new text), and
        the items with a new text that are still candidates, with their vectors."""
        if self._derived_arrays is None:
            removed = np.fromiter(sorted(self._removed), dtype=np.int64, count=len(self._removed))
            changed = np.fromiter(sorted(self._changed), dtype=np.int64, count=len(self._changed))
            live = changed[~np.isin(changed, removed)]
            skip = np.union1d(removed, changed)
            self._derived_arrays = {"removed": removed, "changed": live, "vectors": self.catalog.vectors[live],
                                    "skip": skip[skip < self.n_indexed]}
        return self._derived_arrays

    def _apply(self, rec: dict) -> tuple[int, bool]:
        self.log_records += 1
        if rec.get("removed"):
            row = self.catalog.row.get(rec["item"]["item_id"], -1)
            if row >= 0:  # (an item a newer batch no longer lists: nothing to hide)
                self._set_removed(row, True)
            return row, False
        item = ItemUpdate(**rec["item"])
        batch_row = self.catalog.row.get(item.item_id, self.n_batch)
        if self.batch_time is not None and batch_row < self.n_batch and rec.get("written", 0.0) < self.batch_time:
            self.superseded += 1  # the batch read this item after the upsert was written
            return batch_row, False
        # The text as it was: the vector as it was (the encoder reads only the text), which for an
        # item the index holds, and whose text no upsert changed, is the index's own.
        known = self.catalog.row.get(item.item_id)
        same_text = known is not None and known not in self._other_encoder and self.catalog.text[known] == item.text()
        row, created = self.catalog.upsert(item, None if same_text else decode_vector(rec["vector"]))
        self._upserted.add(row)
        if not same_text:  # this record's vector is the row's now: whose encoder made it?
            other = rec.get("encoder") not in (None, self.encoder_id) and self.encoder_id is not None
            (self._other_encoder.add if other else self._other_encoder.discard)(row)
            self._changed.add(row)
            self._derived_arrays = None
        if row in self._removed:
            self._set_removed(row, False)
        if self.bm25 is not None:
            self.bm25.set_doc(row, self.catalog.fields(row))
        return row, created

    def known_vector(self, item: ItemUpdate) -> np.ndarray | None:
        """`item`'s vector when the catalog holds it with this very text and an own-encoder vector (no encoding needed)."""
        row = self.catalog.row.get(item.item_id)
        if row is None or row in self._other_encoder or self.catalog.text[row] != item.text():
            return None
        return self.catalog.vectors[row].copy()

    def sync(self) -> int:
        """Apply upserts other processes logged since the last call; returns how many."""
        if self.log is None:
            return 0
        recs = self.log.refresh()
        for rec in recs:
            self._apply(rec)
        return len(recs)

    def upsert(self, item: ItemUpdate, vector: np.ndarray) -> tuple[int, bool]:
        """Durably log the item, then apply it; returns (row, created). A new item when the catalog
        holds retriever.max_items raises CatalogFull (nothing logged)."""
        rec = {"item": item.to_record(), "vector": encode_vector(vector), "written": time.time(),
               "encoder": self.encoder_id}
        if self.log is not None:
            self.sync()
        if item.item_id not in self.catalog.row and len(self.catalog) >= self.cfg.max_items:
            raise CatalogFull(f"item_id: the catalog is full ({len(self.catalog)} items, limit retriever.max_items="
                              f"{self.cfg.max_items}); change existing items or raise the limit", "item_id")
        if self.log is not None:
            self.log.append([rec])
        out = self._apply(rec)
        self._maybe_compact()
        return out

    def _maybe_compact(self) -> None:
        live = len(self._upserted) + len(self._removed) + self.superseded
        if self.log is not None and self.log_records > 2 * live + COMPACT_SLACK:
            self.compact()

    def remove(self, item_id: str) -> bool:
        """Durably log the item's removal, then apply it; False (nothing logged) when the catalog
        has no such item. Removing a removed item again is a no-op that still answers True."""
        if self.log is not None:
            self.sync()
        if item_id not in self.catalog.row:
            return False
        if self.is_removed(item_id):
            return True
        rec = {"item": {"item_id": item_id}, "removed": True}
        if self.log is not None:
            self.log.append([rec])
        self._apply(rec)
        self._maybe_compact()
        return True

    def excluded(self, item_ids: frozenset[str] | set[str] = frozenset()) -> np.ndarray:
        """Rows no candidate source may return: these items' and every removed item's (unsorted;
        a row may repeat)."""
        return self._with_removed(self.catalog.rows(list(item_ids)))

    def _with_removed(self, rows: np.ndarray) -> np.ndarray:
        removed = self._derived()["removed"]
        return np.concatenate([rows, removed]) if len(removed) else rows

    def compact(self) -> int:
        """Rewrite the item log without records a later record of the same item supersedes, so
        the log holds about one record per changed or removed item however often items change; returns how
        many went. Safe next to other writers: a record appended meanwhile is newer, never removed."""
        if self.log is None:
            return 0
        latest: dict[str, int] = {}
        n = 0
        for rec in self.log.read_after(0):
            latest[rec["item"]["item_id"]] = rec["seq"]
            n += 1
        removed = self.log.remove(lambda rec: rec["seq"] < latest.get(rec["item"]["item_id"], -1))
        self.log_records = n - removed
        return removed

    # --- retrieval ---------------------------------------------------------------------------
    def allowed(self, filters: Filters | None) -> np.ndarray | None:
        """Rows that pass the filters, or None for "every row"."""
        cat = self.catalog
        if filters is None or not filters.any():
            return None
        rows = np.arange(len(cat))
        return rows[cat.filter_mask(rows, filters.category, filters.price_min, filters.price_max, filters.in_stock)]

    def ann(self, vec: np.ndarray, k: int, allowed: np.ndarray | None = None,
            excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores (k,), rows (k,)) by inner product with vec (d,), never an `excluded` row
        nor a removed one (`excluded` need not list those).

        Exact over `allowed` (filters); otherwise the FAISS index, which skips the excluded and
        removed rows and the stale vectors of items whose text changed, plus those items scored
        exactly. Exclusions (e.g. a buyer's purchases) never force an exact scan or a larger search."""
        q = np.asarray(vec, dtype=np.float32).reshape(1, -1)
        d = self._derived()
        excluded = np.zeros(0, np.int64) if excluded is None else excluded
        if allowed is not None:
            gone = np.concatenate([excluded, d["removed"]])
            if len(gone):
                allowed = allowed[~np.isin(allowed, gone)]
            if not len(allowed):
                return np.zeros(0, np.float32), np.zeros(0, np.int64)
            v = self.catalog.vectors  # most rows pass: one pass over all (copying them out costs 7x more)
            s = (v @ q[0])[allowed] if 4 * len(allowed) > len(v) else v[allowed] @ q[0]
            top = M.top_k(s, k)
            return s[top], allowed[top]
        # Rows of the index are the catalog's first rows.
        s, rows = self.index.search_rows(q, k, d["skip"], excluded[excluded < self.n_indexed])
        changed = d["changed"]
        if len(changed):  # their vectors, not the index's stale ones
            cs = d["vectors"] @ q[0]
            if len(excluded):
                keep = ~np.isin(changed, excluded)
                changed, cs = changed[keep], cs[keep]
            rows, s = np.concatenate([rows, changed]), np.concatenate([s, cs])
        top = np.argsort(-s, kind="stable")[:k]
        return s[top].astype(np.float32), rows[top]

    def search_pool(self, query: str, query_emb: np.ndarray, filters: Filters | None = None,
                    exclude: frozenset[str] = frozenset()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The search pool before fusion: the union of the dense top-n and the lexical top-n rows
        (sorted by row), their cosine, raw BM25 and membership of each list."""
        n = self.cfg.num_candidates
        allowed = self.allowed(filters)
        asked = self.catalog.rows(list(exclude))
        ann_s, ann_rows = self.ann(query_emb, n, allowed, asked)
        excluded = self._with_removed(asked)
        bm = self.bm25.scores(query, len(self.catalog)) if self.bm25 is not None else None
        if bm is not None:
            if allowed is not None:
                masked = np.zeros_like(bm)
                masked[allowed] = bm[allowed]
                bm = masked
            bm[excluded] = 0.0
            hit = np.flatnonzero(bm > 0)
            lex_rows = hit[M.top_k(bm[hit], n)]
        else:
            lex_rows = np.zeros(0, np.int64)
        pool = np.union1d(ann_rows, lex_rows).astype(np.int64)  # sorted by row: ties keep row order
        cos = self.catalog.vectors[pool] @ np.asarray(query_emb, np.float32)
        lex = bm[pool] if bm is not None else np.zeros(len(pool))
        return pool, cos, lex, np.isin(pool, ann_rows), np.isin(pool, lex_rows)

    def search(self, query: str, query_emb: np.ndarray, filters: Filters | None = None,
               exclude: frozenset[str] = frozenset(), fusion: FusionParams | None = None,
               ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Search candidates: (item_ids, ann cosine (C,), raw BM25 (C,)), best fused first, fused by
        `fusion` (default: the config's)."""
        pool, cos, lex, in_dense, in_lexical = self.search_pool(query, query_emb, filters, exclude)
        p = fusion or self.cfg.fusion_params()
        fused = fuse(cos, lex, p.method, p.rrf_k, p.ann_weight, in_dense=in_dense, in_lexical=in_lexical)
        top = np.argsort(-fused, kind="stable")[: self.cfg.num_candidates]
        rows = pool[top]
        return [self.catalog.item_ids[r] for r in rows], cos[top].astype(np.float32), lex[top]

    def recommend(self, user_vec: np.ndarray | None, recent_items: list[str], context_item: str | None,
                  filters: Filters | None = None, exclude: frozenset[str] = frozenset(),
                  seq_vec: np.ndarray | None = None, ease: tuple[np.ndarray, np.ndarray] | None = None,
                  als_user: np.ndarray | None = None) -> list[str]:
        """Recommend candidates from the user vector, the context item, the behaviour model's user
        vector (`seq_vec`, scored exactly against the model's item vectors), the EASE scores of the
        shopper's history (`ease`: rows, scores; ranking.attach_ease), the ALS vector of that history
        (`als_user`; ranking.attach_als), co-occurrence and popularity."""
        cfg, cat = self.cfg, self.catalog
        allowed = self.allowed(filters)
        asked = cat.rows(list(exclude | ({context_item} if context_item else set())))
        excluded = self._with_removed(asked)
        ok = None if allowed is None else set(allowed.tolist())
        ex = set(excluded.tolist())
        picked: dict[int, None] = {}
        for vec in (user_vec, cat.vectors[cat.row[context_item]] if context_item in cat.row else None):
            if vec is not None:
                _, rows = self.ann(vec, cfg.num_candidates, allowed, asked)
                picked.update(dict.fromkeys(rows.tolist()))
        if seq_vec is not None and cat.sequence is not None and cfg.sequence_candidates:
            s = cat.sequence.vectors @ np.asarray(seq_vec, np.float32)
            picked.update(dict.fromkeys(M.top_k_allowed(s, cfg.sequence_candidates, excluded, allowed)))
        if ease is not None and cfg.ease_candidates:
            e_rows, e_scores = ease
            ok_e = ~np.isin(e_rows, excluded) & (e_scores > 0)
            if allowed is not None:
                ok_e &= np.isin(e_rows, allowed)
            e_rows, e_scores = e_rows[ok_e], e_scores[ok_e]
            top = np.lexsort((e_rows, -e_scores))[: cfg.ease_candidates]
            picked.update(dict.fromkeys(int(r) for r in e_rows[top]))
        if als_user is not None and cfg.als_candidates:
            s = cat.als.all_scores(als_user, len(cat))
            picked.update(dict.fromkeys(M.top_k_allowed(s, cfg.als_candidates, excluded, allowed)))
        sources = ([context_item] if context_item else []) + recent_items[:10]
        n_cooc = 0
        for src in sources:
            for nbr in cat.cooc.get(src, ([], None))[0]:
                r = cat.row.get(nbr)
                if (r is not None and (ok is None or r in ok) and r not in ex and r not in picked
                        and n_cooc < cfg.cooc_candidates):
                    picked[r] = None
                    n_cooc += 1
        pool = allowed if allowed is not None else np.arange(len(cat))
        pool = pool[~np.isin(pool, excluded)]
        popular = pool[M.top_k(cat.popularity[pool], cfg.popular_candidates)]
        picked.update(dict.fromkeys(int(r) for r in popular if int(r) not in picked))
        return [cat.item_ids[r] for r in picked]
