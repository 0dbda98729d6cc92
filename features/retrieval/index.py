"""FAISS index keyed by item id: exact inner product for small catalogs, IVF or HNSW above.

Vectors are L2-normalised float32, so inner product is cosine similarity. `search` returns
(scores (Q, k), item_ids (Q, k)); slots beyond the catalog size hold score -inf and id None.
Persistence is faiss' own binary format plus a JSON sidecar (ids and parameters): no pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from features import artifacts as A

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]
# An approximate search that skips rows (removed items, stale vectors, a buyer's purchases) finds
# fewer of the rows it may return: HNSW's candidate list and IVF's probed lists are widened by the
# share of rows skipped (at most MAX_WIDEN times), and with at most EXACT_LIVE_ROWS rows left the
# search is exact (HNSW scans its stored vectors, IVF every list; bench/skip_recall.py measures both).
MAX_WIDEN = 16
EXACT_LIVE_ROWS = 20_000


@dataclass(frozen=True)
class IndexConfig:
    kind: IndexKind = "auto"
    exact_below: int = 50_000  # auto: exact search for catalogs smaller than this
    ivf_nlist: int = 0  # 0: about 4 * sqrt(n)
    ivf_nprobe: int = 16
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    hnsw_ef_construction: int = 200

    def resolve(self, n_items: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if n_items < self.exact_below else "hnsw"


class ItemIndex:
    """Item vectors (N, d) with their ids; `search` maps query vectors to the top-k items."""

    def __init__(self, index: faiss.Index, item_ids: list[str], kind: str, params: dict) -> None:
        self.index = index
        self.item_ids = list(item_ids)
        self.kind = kind
        self.params = params
        self._skip: tuple[np.ndarray, object] | None = None  # search_rows' last `skip` and its FAISS selector

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def build(cls, item_ids: list[str], item_emb: np.ndarray, cfg: IndexConfig = IndexConfig(), seed: int = 0) -> "ItemIndex":
        """Build from item_emb (N, d) float32, rows aligned with item_ids."""
        emb = np.ascontiguousarray(item_emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(item_ids):
            raise ValueError(f"item_emb must be (N, d) with N = len(item_ids) = {len(item_ids)}, got {emb.shape}")
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("item_ids must be unique")
        n, d = emb.shape
        kind = cfg.resolve(n)
        params: dict = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "ivf":
            nlist = cfg.ivf_nlist or max(1, int(4 * np.sqrt(n)))
            nlist = min(nlist, n)
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(emb)
            index.nprobe = min(cfg.ivf_nprobe, nlist)
            params = {"nlist": nlist, "nprobe": index.nprobe}
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.hnsw_ef_construction
            index.hnsw.efSearch = cfg.hnsw_ef_search
            params = {"m": cfg.hnsw_m, "ef_search": cfg.hnsw_ef_search, "ef_construction": cfg.hnsw_ef_construction}
        else:
            raise ValueError(f"index kind {kind!r}; allowed: 'auto', 'flat', 'ivf', 'hnsw'")
        index.add(emb)
        return cls(index, item_ids, kind, params)

    def search(self, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str | None]]]:
        """Top-k by inner product: (scores (Q, k) float32, item_ids Q lists of k)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.ascontiguousarray(np.atleast_2d(query_emb), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query_emb has dimension {q.shape[1]}, the index {self.dim}")
        scores, idx = self.index.search(q, k)
        scores = np.where(idx < 0, -np.inf, scores).astype(np.float32)
        ids = [[self.item_ids[j] if j >= 0 else None for j in row] for row in idx]
        return scores, ids

    def search_rows(self, query_emb: np.ndarray, k: int, skip: np.ndarray | None = None,
                    also: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one query (d,) by inner product: (scores, rows), rows being positions in
        item_ids, at most k of them. `skip` and `also`: rows never returned, left out inside FAISS
        (an ID selector), so a search costs about the same however many rows are skipped. The
        selector of `skip` is kept while the same array object comes again (a long-lived set, such
        as the removed items); `also` is this search's own (a buyer's purchases)."""
        q = np.ascontiguousarray(np.asarray(query_emb, dtype=np.float32).reshape(1, -1))
        if q.shape[1] != self.dim:
            raise ValueError(f"query_emb has dimension {q.shape[1]}, the index {self.dim}")
        k = min(k, self.index.ntotal)
        if k < 1:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        # Every selector stays referenced here until the search is done (FAISS holds raw pointers).
        parts: list = []
        if skip is not None and len(skip):
            cached = self._skip
            if cached is None or cached[0] is not skip:
                cached = self._skip = (skip, faiss.IDSelectorBatch(np.ascontiguousarray(skip, dtype=np.int64)))
            parts.append(cached[1])
        if also is not None and len(also):
            parts.append(faiss.IDSelectorBatch(np.ascontiguousarray(also, dtype=np.int64)))
        if not parts:
            scores, idx = self.index.search(q, k)
        else:
            inner = parts[0] if len(parts) == 1 else faiss.IDSelectorOr(parts[0], parts[1])
            sel = faiss.IDSelectorNot(inner)
            n = self.index.ntotal
            live = max(n - len(skip if skip is not None else ()) - len(also if also is not None else ()), 1)
            widen = min(MAX_WIDEN, n / live)  # (a row in both lists counts twice: a little wider, never narrower)
            index = self.index
            if self.kind == "hnsw" and live <= EXACT_LIVE_ROWS:  # few rows left: scan them (cheaper and exact)
                index, params = faiss.downcast_index(self.index.storage), faiss.SearchParameters(sel=sel)
            elif self.kind == "hnsw":
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=int(max(self.index.hnsw.efSearch, k) * widen))
            elif self.kind == "ivf":  # every list when few rows are left: exact over them
                probe = self.index.nlist if live <= EXACT_LIVE_ROWS else int(self.index.nprobe * widen)
                params = faiss.SearchParametersIVF(sel=sel, nprobe=min(self.index.nlist, probe))
            else:
                params = faiss.SearchParameters(sel=sel)
            scores, idx = index.search(q, k, params=params)
        keep = idx[0] >= 0
        return scores[0][keep].astype(np.float32), idx[0][keep].astype(np.int64)

    def vectors(self) -> np.ndarray:
        """Every stored vector (N, d) float32, rows aligned with item_ids (read back from FAISS)."""
        if isinstance(self.index, faiss.IndexIVF):
            self.index.make_direct_map()
        return self.index.reconstruct_n(0, self.index.ntotal).astype(np.float32)

    def save(self, directory: str | Path) -> None:
        """Write index.faiss and index.json to a folder (local or URI)."""
        with A.staged(str(directory)) as d:
            faiss.write_index(self.index, str(d / "index.faiss"))
            (d / "index.json").write_text(json.dumps({"kind": self.kind, "params": self.params, "dim": self.dim,
                                                      "item_ids": self.item_ids}))

    @classmethod
    def load(cls, directory: str | Path) -> "ItemIndex":
        d = Path(A.local_copy(str(directory)))
        meta = json.loads((d / "index.json").read_text())
        index = faiss.read_index(str(d / "index.faiss"))
        if index.ntotal != len(meta["item_ids"]):
            raise ValueError(f"{d}: index holds {index.ntotal} vectors but {len(meta['item_ids'])} ids")
        return cls(index, meta["item_ids"], meta["kind"], meta["params"])


def brute_force(query_emb: np.ndarray, item_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by numpy (the oracle for tests): (scores (Q, k), row indices (Q, k))."""
    sims = np.atleast_2d(query_emb).astype(np.float32) @ item_emb.astype(np.float32).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def config_dict(cfg: IndexConfig) -> dict:
    return asdict(cfg)
