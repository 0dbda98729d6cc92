"""The serving catalog: every item's vector, text, filters and batch features, plus live upserts.

Loaded from one features version (items, co-occurrence, EASE neighbours) and one index version (the item vectors,
read back from the FAISS index, so serving ranks with exactly the vectors it retrieves with).
`upsert` adds or replaces an item with its encoded vector; a replaced item keeps its row (the
vector and fields change in place), a new item gets a new row. Rows are never removed, so row
numbers held by a caller stay valid.

Memory: N x d float32 vectors (3,940 x 384 = 6 MB for the bundled catalog; 1M items = 1.5 GB)
plus a few arrays of N.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import polars as pl

from features import artifacts as A
from features.data import schema as S
from features.data.als import AlsScorer
from features.data.text import ITEM_TEXT_MAX_CHARS, item_text
from features.retrieval.index import ItemIndex
from features.retrieval.lexical import Analyzer

POPULARITY_HALF_LIFE_DAYS = 7.0  # "popular this week"
POPULARITY_SHORT_DAYS, POPULARITY_LONG_DAYS = 1.0, 30.0
# A reason may call an item popular (this week, this month, trending today) only when it is among the
# catalog's top 5% by that measure (at least 10 items): every item with a sale has a popularity above 0.
POPULAR_TOP_SHARE, POPULAR_TOP_MIN = 0.05, 10
ITEM_AGE_DAYS = 30.0  # the ranker's item_age: exp(-days since the item's first interaction / this)
_WORD = re.compile(r"[^\W\d_]{2,}")  # a word: two letters or more (YooChoose's category "S" is none)
TERM_CACHE_ROWS = 200_000  # rows whose analysed title/text terms are kept (the cache restarts when full)


class Terms(NamedTuple):
    """A row's analysed text, as the ranker's match features read it."""

    title: frozenset[str]  # the title's terms
    text: frozenset[str]  # the whole item text's terms
    head: str | None  # the title's head term (Analyzer.head)
    title_pairs: frozenset[tuple[str, str]]  # the title's adjacent term pairs, in order


@dataclass(frozen=True)
class ItemUpdate:
    """A new or changed item, as PUT /v1/items/{id} carries it."""

    item_id: str
    title: str
    description: str | None = None
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    in_stock: bool = True

    def text(self) -> str:
        """The encoder's text of the item (as the feature job renders the batch's)."""
        return item_text(self.title, self.category, self.brand, self.description)

    def to_record(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("item_id", "title", "description", "category", "brand", "price", "in_stock")}


class SequenceSource(Protocol):
    """A behaviour model bound to a catalog's rows (features/models/sequence.py's SequenceScorer)."""

    vectors: np.ndarray  # (N, d') item vectors in the model's space, rows as the catalog's

    def user_vector(self, history: list[tuple[str, str, float]], row: dict[str, int]) -> np.ndarray | None: ...

    def set_row(self, r: int, item_id: str, text_vector: np.ndarray) -> None: ...


class ItemNeighbours:
    """Weighted item-to-item neighbours by catalog row (a features version's EASE table,
    features/data/ease.py): a shopper's score for an item is the sum of the weights from the
    items of their history to it. Rows are fixed at load; items added later have no neighbours."""

    def __init__(self, table: dict[str, tuple[list[str], np.ndarray]], row: dict[str, int]) -> None:
        self.by_row: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for a, (nbrs, w) in table.items():
            ra = row.get(a)
            keep = [(row[b], float(x)) for b, x in zip(nbrs, w) if b in row]
            if ra is not None and keep:
                self.by_row[ra] = (np.array([k for k, _ in keep], np.int64), np.array([x for _, x in keep]))
        into: dict[int, list[tuple[int, float]]] = {}
        for ra in sorted(self.by_row):
            for rb, x in zip(*self.by_row[ra]):
                into.setdefault(int(rb), []).append((ra, float(x)))
        # target row -> (source rows ascending, their weights to it): who reaches an item, for its reason
        self.into = {rb: (np.array([a for a, _ in v], np.int64), np.array([x for _, x in v])) for rb, v in into.items()}

    def __len__(self) -> int:
        return len(self.by_row)

    def strongest(self, rows, target: int) -> int | None:
        """The row among `rows` with the largest positive weight to `target` (the smallest such row
        on a tie), None when none reaches it."""
        srcs, w = self.into.get(target, (None, None))
        if srcs is None:
            return None
        ws = np.where(np.isin(srcs, np.fromiter(rows, np.int64)), w, -np.inf)
        i = int(np.argmax(ws))
        return int(srcs[i]) if ws[i] > 0 else None

    def scores(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(rows, summed weights), rows ascending, over every neighbour of the distinct source rows."""
        parts = [self.by_row[r] for r in set(rows) if r in self.by_row]
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        idx, inv = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
        return idx, np.bincount(inv, weights=np.concatenate([p[1] for p in parts]))


class Catalog:
    """Items by row: vectors (N, d) float32 L2-normalised, fields, popularity, co-occurrence and
    EASE neighbours."""

    def __init__(self, item_ids: list[str], vectors: np.ndarray, items: pl.DataFrame,
                 cooc: dict[str, tuple[list[str], np.ndarray]],
                 ease: dict[str, tuple[list[str], np.ndarray]] | None = None,
                 als: pl.DataFrame | None = None) -> None:
        n = len(item_ids)
        if vectors.shape[0] != n:
            raise ValueError(f"{n} item ids but {vectors.shape[0]} vectors")
        self.dim = int(vectors.shape[1])
        self.item_ids: list[str] = list(item_ids)
        self.row: dict[str, int] = {i: r for r, i in enumerate(self.item_ids)}
        self._vec = np.ascontiguousarray(vectors, dtype=np.float32)
        by_id = items.unique(S.ITEM_ID, keep="first")
        aligned = pl.DataFrame({S.ITEM_ID: self.item_ids}).join(by_id, on=S.ITEM_ID, how="left", maintain_order="left")
        pop_col = S.half_life_col(POPULARITY_HALF_LIFE_DAYS)

        def col(name: str, default: Any) -> list:
            return aligned.get_column(name).to_list() if name in aligned.columns else [default] * n

        self.title: list[str] = [t if t is not None else i for t, i in zip(col(S.TITLE, None), self.item_ids)]
        self.category: list[str | None] = col(S.CATEGORY, None)
        self.brand: list[str | None] = col(S.BRAND, None)
        self.description: list[str | None] = col(S.DESCRIPTION, None)
        self.text: list[str] = [t or "" for t in col(S.ITEM_TEXT, "")]
        # A catalog of ids without words (RetailRocket, YooChoose, Diginetica's hashed names): its
        # vectors encode digit strings, so their likeness explains nothing (reasons.py says so).
        step = max(1, n // 10_000)  # a spread sample: startup need not read two million titles for it
        worded = [bool(_WORD.search((self.text[r] or self.title[r]).replace(self.item_ids[r], "")))
                  for r in range(0, n, step)]
        self.has_text = bool(worded) and sum(worded) >= 0.5 * len(worded)
        self.price = np.array([np.nan if p is None else p for p in col(S.PRICE, None)], dtype=np.float64)
        self.in_stock = np.array([True if s is None else bool(s) for s in col(S.IN_STOCK, True)], dtype=bool)
        self.popularity = np.array([0.0 if p is None else p for p in col(pop_col, 0.0)], dtype=np.float64)
        # The same decayed popularity with a short and a long half-life (for the ranker's trend
        # features; zeros when the features version did not compute them).
        self.popularity_short = np.array([0.0 if p is None else p for p in col(S.half_life_col(POPULARITY_SHORT_DAYS), 0.0)],
                                         dtype=np.float64)
        self.popularity_long = np.array([0.0 if p is None else p for p in col(S.half_life_col(POPULARITY_LONG_DAYS), 0.0)],
                                        dtype=np.float64)
        self.n_users = np.array([0 if p is None else p for p in col(S.N_USERS, 0)], dtype=np.int64)
        # The kind of interaction most of the log's positive ones are (a purchase log, a clickstream
        # of views): what the reasons say other shoppers did ("often bought with", "often viewed with").
        counts = {t: sum(v or 0 for v in col(S.n_col(t), 0)) for t in S.POSITIVE_EVENT_TYPES}
        self.main_interaction = max(counts, key=lambda t: counts[t]) if any(counts.values()) else S.EventType.PURCHASE.value
        # Epoch seconds of each item's first interaction in the features version; NaN: none yet
        # (an item added since, or never interacted with).
        self.first_seen = (aligned.get_column(S.FIRST_SEEN).dt.epoch("us").cast(pl.Float64)
                           .fill_null(np.nan).to_numpy() / 1e6 if S.FIRST_SEEN in aligned.columns
                           else np.full(n, np.nan))
        self.cooc = cooc
        self.ease = ItemNeighbours(ease or {}, self.row)
        self.als = AlsScorer(als, self.row)
        self.set_popularity(self.popularity, self.popularity_short, self.popularity_long)
        self.version = 0  # bumps on every upsert
        self._bufs: dict[str, np.ndarray] = {}  # _append's growing storage of the per-row arrays
        self.sequence: SequenceSource | None = None  # the behaviour model bound to these rows, if any
        self.analyzer = Analyzer()  # text -> terms for the ranker's match features (LiveCatalog sets BM25's own)

    @property
    def analyzer(self) -> Analyzer:
        return self._analyzer

    @analyzer.setter
    def analyzer(self, analyzer: Analyzer) -> None:
        self._analyzer = analyzer
        self._terms: dict[int, Terms] = {}

    def terms(self, row: int) -> Terms:
        """A row's `Terms` by the analyzer. The ranker's match features read them
        for every candidate of every search, and analysing the text was half of a search's ranking
        time, so they are kept (for up to TERM_CACHE_ROWS rows) until the row changes."""
        hit = self._terms.get(row)
        if hit is None:
            if len(self._terms) >= TERM_CACHE_ROWS:
                self._terms = {}
            a = self._analyzer
            title = a.tokens(self.title[row])
            hit = self._terms[row] = Terms(frozenset(title), frozenset(a.tokens(self.text[row])), a.head(self.title[row]),
                                           frozenset(zip(title, title[1:])))
        return hit

    @property
    def vectors(self) -> np.ndarray:
        """(N, d) float32 view of the live rows."""
        return self._vec[: len(self.item_ids)]

    def __len__(self) -> int:
        return len(self.item_ids)

    def fields(self, r: int) -> dict[str, str | None]:
        """Row r's searchable fields (features/retrieval/lexical.py FIELDS); the description is cut
        at the item text's length limit."""
        desc = self.description[r]
        return {"title": self.title[r], "brand": self.brand[r], "category": self.category[r],
                "description": desc[:ITEM_TEXT_MAX_CHARS] if desc else None}

    def rows(self, item_ids: list[str]) -> np.ndarray:
        """Row numbers of known ids (unknown ids are skipped)."""
        return np.array([self.row[i] for i in item_ids if i in self.row], dtype=np.int64)

    def set_popularity(self, weekly: np.ndarray, short: np.ndarray, long: np.ndarray) -> None:
        """Replace the decayed popularity (7-, 1- and 30-day half-lives, one value per row), as a
        features version computed at another instant would hold it; the scaling maxima follow.
        The offline evaluation uses it to score a request with the popularity of its own time."""
        n = len(self.item_ids)
        for name, a in (("weekly", weekly), ("short", short), ("long", long)):
            if np.shape(a) != (n,):
                raise ValueError(f"set_popularity: {name} has shape {np.shape(a)}, the catalog has {n} rows")
        self.popularity = np.array(weekly, dtype=np.float64)
        self.popularity_short = np.array(short, dtype=np.float64)
        self.popularity_long = np.array(long, dtype=np.float64)
        self._pop_log_max = max(math.log1p(float(self.popularity.max(initial=0.0))), 1e-9)
        self._short_log_max = max(math.log1p(float(self.popularity_short.max(initial=0.0))), 1e-9)
        self._long_log_max = max(math.log1p(float(self.popularity_long.max(initial=0.0))), 1e-9)
        k = max(POPULAR_TOP_MIN, int(n * POPULAR_TOP_SHARE))
        self.popular_floor = {  # the ranking features' value (log1p / max) of the k-th most popular item
            name: (math.log1p(float(np.partition(a, n - k)[n - k])) / m if n > k else 0.0)
            for name, a, m in (("popularity", self.popularity, self._pop_log_max),
                               ("popularity_1d", self.popularity_short, self._short_log_max),
                               ("popularity_30d", self.popularity_long, self._long_log_max))}

    def set_first_seen(self, first_seen: np.ndarray) -> None:
        """Replace each row's first-interaction time (epoch seconds, NaN for none), as a features
        version computed at another instant would hold it (the offline evaluation's leave-last)."""
        if np.shape(first_seen) != (len(self.item_ids),):
            raise ValueError(f"set_first_seen: shape {np.shape(first_seen)}, the catalog has {len(self.item_ids)} rows")
        self.first_seen = np.array(first_seen, dtype=np.float64)

    def item_age(self, rows: np.ndarray, now: float) -> np.ndarray:
        """exp(-days since each item's first interaction / ITEM_AGE_DAYS): 1 for an item first
        interacted with just now or never (new in the shop), towards 0 for long-standing items."""
        first = self.first_seen[rows]
        days = np.maximum(now - np.nan_to_num(first, nan=now), 0.0) / 86_400.0
        return np.exp(-days / ITEM_AGE_DAYS)

    def nearest(self, rows: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each of `rows`: the largest cosine to one of the rows `others` other than itself, and
        that row (0.0 and -1 when there is none)."""
        others = np.unique(np.asarray(others, np.int64))
        rows = np.asarray(rows, np.int64)
        if not len(others) or not len(rows):
            return np.zeros(len(rows), np.float32), np.full(len(rows), -1, np.int64)
        sims = self.vectors[rows] @ self.vectors[others].T  # (C, H)
        sims[rows[:, None] == others[None, :]] = -np.inf
        best = sims.argmax(axis=1)
        top = sims[np.arange(len(rows)), best]
        found = np.isfinite(top)
        return np.where(found, top, 0.0).astype(np.float32), np.where(found, others[best], -1)

    def popularity_norm(self, rows: np.ndarray) -> np.ndarray:
        """log1p(weekly popularity) scaled to [0, 1] by the catalog maximum at load time."""
        return np.minimum(np.log1p(self.popularity[rows]) / self._pop_log_max, 1.0)

    def popularity_trend(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log1p(1-day popularity) / max, log1p(30-day popularity) / max): today's and the month's."""
        return (np.minimum(np.log1p(self.popularity_short[rows]) / self._short_log_max, 1.0),
                np.minimum(np.log1p(self.popularity_long[rows]) / self._long_log_max, 1.0))

    def upsert(self, item: ItemUpdate, vector: np.ndarray | None) -> tuple[int, bool]:
        """Add or replace an item; returns (row, created). `vector` None keeps a known item's own."""
        created = item.item_id not in self.row
        if vector is None and created:
            raise ValueError(f"item {item.item_id!r} is new: it needs a vector")
        v = self._vec[self.row[item.item_id]] if vector is None else np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.shape[0] != self.dim:
            raise ValueError(f"item vector has dimension {v.shape[0]}, the catalog {self.dim}")
        if created:
            r = len(self.item_ids)
            if r >= self._vec.shape[0]:  # grow by doubling: amortised O(1) appends
                grown = np.zeros((max(2 * self._vec.shape[0], 16), self.dim), np.float32)
                grown[:r] = self._vec[:r]
                self._vec = grown
            self.item_ids.append(item.item_id)
            self.row[item.item_id] = r
            for name, value in (("title", item.title), ("category", item.category), ("brand", item.brand),
                                ("description", item.description), ("text", item.text())):
                getattr(self, name).append(value)
            self._append({"price": np.nan if item.price is None else item.price, "in_stock": item.in_stock,
                          "popularity": 0.0, "popularity_short": 0.0, "popularity_long": 0.0, "n_users": 0,
                          "first_seen": np.nan})
        else:
            r = self.row[item.item_id]
            self.title[r], self.category[r], self.brand[r] = item.title, item.category, item.brand
            self.description[r], self.text[r] = item.description, item.text()
            self.price[r] = np.nan if item.price is None else item.price
            self.in_stock[r] = item.in_stock
        self._terms.pop(r, None)
        if vector is not None:
            self._vec[r] = v
            if self.sequence is not None:
                self.sequence.set_row(r, item.item_id, v)
        self.version += 1
        return r, created

    def _append(self, values: dict[str, Any]) -> None:
        """One more row of each named per-row array. Each is a view of a buffer that grows by
        doubling, so adding items one at a time costs O(1) each, not a copy of every row (an
        array replaced meanwhile, by set_popularity say, gets a new buffer)."""
        for name, value in values.items():
            cur = getattr(self, name)
            n, buf = len(cur), self._bufs.get(name)
            if buf is None or cur.base is not buf or n == len(buf):
                buf = np.empty(max(2 * n, 16), cur.dtype)
                buf[:n] = cur
                self._bufs[name] = buf
            buf[n] = value
            setattr(self, name, buf[: n + 1])

    def filter_mask(self, rows: np.ndarray, category: str | None = None, price_min: float | None = None,
                    price_max: float | None = None, in_stock: bool | None = None) -> np.ndarray:
        """Which of `rows` pass the filters. category matches the item's path or a prefix of it
        ("Home" matches "Home > Kitchen"); a price filter drops items without a price."""
        keep = np.ones(len(rows), dtype=bool)
        if category is not None:
            want = category.strip().lower()
            picked = list(map(self.category.__getitem__, rows.tolist()))
            match = {c: _category_matches(c, want) for c in set(picked)}  # once per distinct path (4x faster)
            keep &= np.fromiter(map(match.__getitem__, picked), dtype=bool, count=len(picked))
        if price_min is not None:
            keep &= np.nan_to_num(self.price[rows], nan=-np.inf) >= price_min
        if price_max is not None:
            keep &= np.nan_to_num(self.price[rows], nan=np.inf) <= price_max
        if in_stock is not None:
            keep &= self.in_stock[rows] == in_stock
        return keep

    def lookup(self, item_id: str) -> tuple[np.ndarray | None, str | None, float | None]:
        """(vector, category, price) of an item for folding it into a profile; Nones if unknown."""
        r = self.row.get(item_id)
        if r is None:
            return None, None, None
        price = self.price[r]
        return self.vectors[r], self.category[r], None if np.isnan(price) else float(price)

    def describe(self, r: int) -> dict[str, Any]:
        price = self.price[r]
        return {"item_id": self.item_ids[r], "title": self.title[r], "category": self.category[r],
                "price": None if np.isnan(price) else float(price), "in_stock": bool(self.in_stock[r])}


def _category_matches(category: str | None, want: str) -> bool:
    if category is None:
        return False
    c = category.strip().lower()
    return c == want or c.startswith(want + " >")


def read_neighbours(path: str) -> dict[str, tuple[list[str], np.ndarray]]:
    """item_a -> (neighbour ids by rank, scores) from a features version's cooccurrence/ or ease/."""
    df = A.read_parquet(path, columns=[S.ITEM_A, S.ITEM_B, S.SCORE, S.RANK]).sort([S.ITEM_A, S.RANK])
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for (a,), g in df.group_by(S.ITEM_A, maintain_order=True):
        out[str(a)] = (g.get_column(S.ITEM_B).cast(pl.String).to_list(), g.get_column(S.SCORE).to_numpy().astype(np.float64))
    return out


def load_catalog(features_dir: str, index_dir: str) -> tuple[Catalog, ItemIndex]:
    """The catalog of a features version with the vectors of an index version built from it."""
    index = ItemIndex.load(index_dir)
    vectors = index.vectors()
    items = A.read_parquet(A.join(features_dir, "items"))

    def present(name: str) -> str | None:  # a version built before EASE or ALS existed has no ease/ or als/
        path = A.join(features_dir, name)
        fs, inner = A.resolve(path)
        return path if fs.get_file_info(inner).type != A.pafs.FileType.NotFound else None

    tables = {name: read_neighbours(path) if (path := present(name)) else {} for name in ("cooccurrence", "ease")}
    als = A.read_parquet(path) if (path := present("als")) else None
    return Catalog(index.item_ids, vectors, items, tables["cooccurrence"], tables["ease"], als), index
