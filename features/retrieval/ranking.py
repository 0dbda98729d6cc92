"""One feature function for (request context, candidate item), the hand-set scorer, reasons, MMR.

`candidate_features` is the only place ranking features are computed: the serving Ranker calls it
per request, and offline training and evaluation call it on contexts rebuilt from logged events,
so the two cannot drift. Every feature is a float in a known range (features/retrieval/feature_names.py).

Until a learned ranker exists, `HandWeights` scores a candidate as the weighted sum of its
features; the weights differ for search (the query dominates) and recommend (the shopper does).
The per-feature contributions double as explanations: the largest ones become the result's
reasons ("matches \"red mug\"", "because you viewed WHITE MUG", "popular this week").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from features.data.schema import POSITIVE_EVENT_TYPES
from features.profiles.profile import Profile, ProfileParams, mix
from features.retrieval.catalog import Catalog
from features.retrieval.diversity import mmr
from features.retrieval.feature_names import FEATURE_NAMES
from features.retrieval.reasons import RECENT_FOR_COOC, reasons

Mode = Literal["search", "recommend"]

_F = {name: i for i, name in enumerate(FEATURE_NAMES)}
COOC_DISCOUNT = 0.85


@dataclass
class RankContext:
    """What the ranker knows about a request, independent of the candidates."""

    mode: Mode
    query: str | None = None
    query_emb: np.ndarray | None = None  # (d,)
    intent: np.ndarray | None = None  # (d,) unit
    alpha: float = 0.0
    preference: np.ndarray | None = None  # (d,) unit
    recent_items: list[tuple[str, str]] = field(default_factory=list)  # (item_id, event_type), newest first
    # What the session intent is made of, for explanations: (event type, item id or query text,
    # embedding, event weight), newest first; the newest search and the last 5 item events.
    intent_sources: list[tuple[str, str, np.ndarray, float]] = field(default_factory=list)
    context_item: str | None = None
    category_affinity: dict[str, float] = field(default_factory=dict)
    price_stats: tuple[float, float] | None = None
    purchased: frozenset[str] = frozenset()
    now: float = 0.0  # request time, epoch seconds
    history: list[tuple[str, str, float]] = field(default_factory=list)  # (item_id, event_type, ts), newest first
    seq_vector: np.ndarray | None = None  # the behaviour model's user vector (see `attach_sequence`)
    ease: tuple[np.ndarray, np.ndarray] | None = None  # (rows, EASE scores) of the history (see `attach_ease`)
    ease_rows: frozenset[int] | None = None  # `ease_history`, once computed
    als_user: np.ndarray | None = None  # the ALS vector of `ease_history` (see `attach_als`)

    def user_vector(self) -> np.ndarray | None:
        """The shopper's vector (see features/profiles/profile.py), None for a shopper without one."""
        return mix(self.intent, self.preference, self.alpha)

    def ease_history(self, catalog: Catalog) -> frozenset[int]:
        """Catalog rows of the shopper's recent positive items and purchases (once per request: a
        regular buyer has hundreds, and each result's reason reads them)."""
        if self.ease_rows is None:
            items = {i for i, t in self.recent_items if t in POSITIVE_EVENT_TYPES} | set(self.purchased)
            self.ease_rows = frozenset(catalog.row[i] for i in items if i in catalog.row)
        return self.ease_rows

    def history_rows(self, catalog: Catalog) -> np.ndarray:
        return np.array([catalog.row[i] for i, _ in self.recent_items if i in catalog.row], np.int64)


def context_for(mode: Mode, profile: Profile | None, now: float, p: ProfileParams, query: str | None = None,
                query_emb: np.ndarray | None = None, context_item: str | None = None) -> RankContext:
    """The RankContext of a request by a shopper with `profile` (None: anonymous or unknown)."""
    ctx = RankContext(mode=mode, query=query, query_emb=query_emb, context_item=context_item, now=now)
    if profile is None:
        return ctx
    ctx.history = list(profile.recent_items)
    ctx.intent = profile.intent()
    ctx.alpha = profile.alpha(now, p) if ctx.intent is not None else 0.0
    ctx.preference = profile.preference()
    ctx.recent_items = [(i, t) for i, t, _ in profile.recent_items]
    if ctx.intent is not None:
        start = profile.session_start_ts
        if profile.recent_queries and profile.last_query_vec is not None and profile.recent_queries[0][1] >= start:
            q = profile.recent_queries[0][0]
            ctx.intent_sources.append(("search", q, profile.last_query_vec, p.weight("search")))
        for item_id, etype, ts in profile.recent_items[:5]:
            if ts >= start and p.weight(etype) > 0:
                ctx.intent_sources.append((etype, item_id, np.zeros(0, np.float32), p.weight(etype)))
    ctx.category_affinity = profile.category_affinity()
    ctx.price_stats = profile.price_stats()
    ctx.purchased = frozenset(profile.purchased)
    return ctx


def attach_sequence(ctx: RankContext, catalog: Catalog) -> np.ndarray | None:
    """ctx.seq_vector from the shopper's history, when the catalog carries a behaviour model
    (features/models/sequence.py); computed once per request, None without a model or history."""
    if ctx.seq_vector is None and catalog.sequence is not None and ctx.history:
        ctx.seq_vector = catalog.sequence.user_vector(ctx.history, catalog.row)
    return ctx.seq_vector


def attach_ease(ctx: RankContext, catalog: Catalog) -> tuple[np.ndarray, np.ndarray] | None:
    """ctx.ease: (rows ascending, scores) of every item the catalog's EASE neighbours reach from the
    shopper's recent positive items and purchases; computed once per request, None without any."""
    if ctx.ease is None and len(catalog.ease) and (ctx.recent_items or ctx.purchased):
        rows, scores = catalog.ease.scores(ctx.ease_history(catalog))
        ctx.ease = (rows, scores) if len(rows) else None
    return ctx.ease


def attach_als(ctx: RankContext, catalog: Catalog) -> np.ndarray | None:
    """ctx.als_user: the ALS shopper vector of the same history as EASE's (recent positive items and
    purchases); computed once per request, None without a fit or without a fitted item in it."""
    if ctx.als_user is None and ctx.mode == "recommend" and len(catalog.als) and (ctx.recent_items or ctx.purchased):
        ctx.als_user = catalog.als.user_vector(ctx.ease_history(catalog))
    return ctx.als_user


def _cos(vec: np.ndarray | None, item_vecs: np.ndarray) -> np.ndarray:
    if vec is None:
        return np.zeros(len(item_vecs), dtype=np.float32)
    return item_vecs @ np.asarray(vec, dtype=np.float32)


def cooc_scores(ctx: RankContext, catalog: Catalog) -> dict[str, float]:
    """item -> discounted co-occurrence with the context item (weight 1) and recent items."""
    sources = ([ctx.context_item] if ctx.context_item else []) + [i for i, _ in ctx.recent_items[:RECENT_FOR_COOC]]
    out: dict[str, float] = {}
    for step, src in enumerate(sources):
        nbrs = catalog.cooc.get(src)
        if nbrs is None:
            continue
        w = COOC_DISCOUNT ** step
        for nbr, s in zip(nbrs[0], nbrs[1]):
            out[nbr] = out.get(nbr, 0.0) + w * float(s)
    return out


def candidate_features(ctx: RankContext, rows: np.ndarray, catalog: Catalog,
                       bm25: np.ndarray | None = None, bm25_max: float | None = None,
                       query_sim_max: float | None = None,
                       ranks: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(C, F) float32 features of the candidate rows, columns in FEATURE_NAMES order.

    bm25: raw BM25 scores of the candidates for ctx.query (None or zeros without a query), scaled
    by bm25_max (default: the best among the candidates, which serving's candidates always hold);
    query_sim_max likewise for query_sim_gap (offline re-ranking of a fixed item set passes both).
    ranks: the candidates' (dense, lexical) ranks from 0 over the whole catalog, -1 for no lexical
    match (offline re-ranking passes them); by default they are ranks among the candidates, which
    for serving's candidates (the union of both retrievers' top lists) are the same at the top.
    """
    rows = np.asarray(rows, dtype=np.int64)
    c = len(rows)
    x = np.zeros((c, len(FEATURE_NAMES)), dtype=np.float32)
    if not c:
        return x
    vecs = catalog.vectors[rows]  # (C, d)
    x[:, _F["query_sim"]] = _cos(ctx.query_emb, vecs)
    if ctx.query_emb is not None:
        best = float(x[:, _F["query_sim"]].max()) if query_sim_max is None else query_sim_max
        x[:, _F["query_sim_gap"]] = best - x[:, _F["query_sim"]]
    top = float(np.max(bm25)) if bm25 is not None and len(bm25) else 0.0
    top = top if bm25_max is None else bm25_max
    if bm25 is not None and len(bm25) and top > 0:
        x[:, _F["lexical"]] = np.asarray(bm25, dtype=np.float64) / top
    x[:, _F["intent_sim"]] = ctx.alpha * _cos(ctx.intent, vecs)
    x[:, _F["session_alpha"]] = ctx.alpha
    x[:, _F["pref_sim"]] = (1.0 - ctx.alpha) * _cos(ctx.preference, vecs)
    if ctx.context_item is not None and ctx.context_item in catalog.row:
        x[:, _F["context_sim"]] = _cos(catalog.vectors[catalog.row[ctx.context_item]], vecs)
    co = cooc_scores(ctx, catalog)
    if co:
        x[:, _F["cooc"]] = np.minimum([co.get(catalog.item_ids[r], 0.0) for r in rows], 1.0)
    x[:, _F["popularity"]] = catalog.popularity_norm(rows)
    x[:, _F["popularity_1d"]], x[:, _F["popularity_30d"]] = catalog.popularity_trend(rows)
    x[:, _F["item_age"]] = catalog.item_age(rows, ctx.now)
    if ctx.category_affinity:
        x[:, _F["category_affinity"]] = [ctx.category_affinity.get(catalog.category[r] or "", 0.0) for r in rows]
    if ctx.price_stats is not None:
        mean, std = ctx.price_stats
        lp = np.log1p(catalog.price[rows])
        z = (lp - mean) / max(std, 0.25)
        x[:, _F["price_affinity"]] = np.where(np.isnan(z), 0.0, np.exp(-0.5 * np.nan_to_num(z) ** 2))
    if ctx.recent_items:
        seen = {i for i, _ in ctx.recent_items}
        x[:, _F["seen_before"]] = [catalog.item_ids[r] in seen for r in rows]
    x[:, _F["seq_score"]], x[:, _F["seq_rank"]] = -1.0, 1.0
    seq = catalog.sequence
    if seq is not None and ctx.seq_vector is not None:
        s = seq.vectors[rows] @ np.asarray(ctx.seq_vector, np.float32)
        x[:, _F["seq_score"]] = s - s.max()
        x[:, _F["seq_rank"]] = np.argsort(np.argsort(-s, kind="stable"), kind="stable") / c
    if ctx.mode == "recommend" and attach_ease(ctx, catalog) is not None:
        e_rows, e_scores = ctx.ease
        pos = np.minimum(np.searchsorted(e_rows, rows), len(e_rows) - 1)
        s = np.where(e_rows[pos] == rows, e_scores[pos], 0.0)
        if s.max() > 0:
            x[:, _F["ease"]] = np.maximum(s, 0.0) / s.max()
    x[:, _F["als_rank"]] = 1.0
    if (user := attach_als(ctx, catalog)) is not None:
        s = catalog.als.scores(user, rows)
        x[:, _F["als"]] = s - s.max()
        x[:, _F["als_rank"]] = np.argsort(np.argsort(-s, kind="stable"), kind="stable") / c
    if ctx.recent_items:
        x[:, _F["history_max_sim"]] = np.maximum(catalog.nearest(rows, ctx.history_rows(catalog))[0], 0.0)
    if ctx.history:
        newest: dict[str, float] = {}
        for item, _, t in ctx.history:
            r = catalog.row.get(item)
            cat = catalog.category[r] if r is not None else None
            if cat is not None and t > newest.get(cat, -np.inf):
                newest[cat] = t
        if newest:
            ages = np.array([(ctx.now - newest[catalog.category[r]]) / 86400.0 if catalog.category[r] in newest
                             else np.inf for r in rows])
            x[:, _F["category_recency"]] = np.exp(-np.maximum(ages, 0.0) / 7.0)
    if ctx.query_emb is not None:
        if ranks is None:
            dense = _ranks(x[:, _F["query_sim"]], rows)
            lex = _ranks(bm25, rows) if bm25 is not None and len(bm25) else np.full(c, -1)
            if bm25 is not None and len(bm25):
                lex = np.where(np.asarray(bm25) > 0, lex, -1)
        else:
            dense, lex = (np.asarray(r, np.float64) for r in ranks)
        x[:, _F["dense_rank"]] = 1.0 / np.log2(2.0 + dense)
        x[:, _F["lexical_rank"]] = np.where(lex >= 0, 1.0 / np.log2(2.0 + np.maximum(lex, 0)), 0.0)
    q_list = catalog.analyzer.tokens(ctx.query)
    if q_tokens := set(q_list):
        n = len(q_tokens)
        terms = [catalog.terms(r) for r in rows]
        x[:, _F["title_match"]] = [len(q_tokens.intersection(t.title)) / n for t in terms]
        x[:, _F["text_match"]] = [len(q_tokens.intersection(t.text)) / n for t in terms]
        if (q_head := catalog.analyzer.head(ctx.query)) is not None:
            x[:, _F["head_match"]] = [t.head == q_head for t in terms]
        if q_pairs := set(zip(q_list, q_list[1:])):
            x[:, _F["phrase_match"]] = [len(q_pairs.intersection(t.title_pairs)) / len(q_pairs) for t in terms]
    return x


def _ranks(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rank from 0 of each score, best first; ties by catalog row (as a catalog-wide ranking)."""
    order = np.lexsort((rows, -np.asarray(scores, np.float64)))
    out = np.empty(len(order), np.float64)
    out[order] = np.arange(len(order))
    return out


def _default_search() -> dict[str, float]:
    return {"query_sim": 1.0, "lexical": 0.6, "intent_sim": 0.3, "pref_sim": 0.15, "context_sim": 0.0,
            "cooc": 0.2, "popularity": 0.15, "category_affinity": 0.1, "price_affinity": 0.05}


def _default_recommend() -> dict[str, float]:
    # seen_before < 0: the item the shopper just viewed is the least useful recommendation
    # (it is demoted, not removed: re-buying is common in a wholesale log like the bundled one).
    return {"intent_sim": 1.0, "pref_sim": 0.6, "context_sim": 0.8, "cooc": 0.6, "popularity": 0.3,
            "category_affinity": 0.2, "price_affinity": 0.1, "query_sim": 0.0, "lexical": 0.0, "seen_before": -0.5}


@dataclass(frozen=True)
class HandWeights:
    """Hand-set linear weights per mode (features not named weigh 0)."""

    search: dict[str, float] = field(default_factory=_default_search)
    recommend: dict[str, float] = field(default_factory=_default_recommend)

    def __post_init__(self) -> None:
        for mode in ("search", "recommend"):
            unknown = sorted(set(getattr(self, mode)) - set(FEATURE_NAMES))
            if unknown:
                raise ValueError(f"ranker.weights.{mode}: unknown feature(s) {unknown}; allowed: {', '.join(FEATURE_NAMES)}")

    def vector(self, mode: Mode) -> np.ndarray:
        w = getattr(self, mode)
        return np.array([w.get(n, 0.0) for n in FEATURE_NAMES], dtype=np.float32)

    def contributions(self, x: np.ndarray, mode: Mode) -> np.ndarray:
        """(C, F) weight * feature; a candidate's score is its row sum."""
        return x * self.vector(mode)[None, :]

    def score(self, x: np.ndarray, mode: Mode) -> np.ndarray:
        return (x * self.vector(mode)[None, :]).sum(axis=1)

    def describe(self, mode: Mode) -> str:
        return "hand-set weights"

    def for_context(self, ctx: RankContext) -> "HandWeights":
        return self


class Scorer(Protocol):
    """What ranks candidates: HandWeights, or features/models/learned_ranker.py's model (with fallback)."""

    def score(self, x: np.ndarray, mode: Mode) -> np.ndarray: ...  # (C,) from (C, F)

    def contributions(self, x: np.ndarray, mode: Mode) -> np.ndarray: ...  # (C, F), for reasons

    def describe(self, mode: Mode) -> str: ...

    def for_context(self, ctx: RankContext) -> "Scorer": ...  # the scorer for this request (a segment's)


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    score: float
    reasons: list[str]
    row: int


def rank_candidates(ctx: RankContext, item_ids: list[str], catalog: Catalog, scorer: Scorer, k: int,
                    bm25: np.ndarray | None = None, diversity: float = 0.0, explain: bool = True) -> list[RankedItem]:
    """Score candidates with `scorer`, optionally re-rank by MMR, and explain the top k (the
    contributions are computed for those k only: a learned model's TreeSHAP is not free; without
    `explain`, not at all, and every item's reasons are empty: the order is the same).

    Candidates the catalog does not know (yet) are dropped; ties keep the retrieval order."""
    rows, x = _known_candidates(ctx, item_ids, catalog, bm25)
    scorer = scorer.for_context(ctx)
    scores = scorer.score(x, ctx.mode)
    order = mmr(scores, catalog.vectors[rows], k, diversity)
    if not explain:
        return [RankedItem(catalog.item_ids[rows[j]], float(scores[j]), [], int(rows[j])) for j in order]
    contrib = scorer.contributions(x[order], ctx.mode)
    return [RankedItem(catalog.item_ids[rows[j]], float(scores[j]),
                       reasons(ctx, int(rows[j]), contrib[n], catalog, x[j]), int(rows[j])) for n, j in enumerate(order)]


def _known_candidates(ctx: RankContext, item_ids: list[str], catalog: Catalog, bm25: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, features) of the candidates the catalog knows, in retrieval order."""
    keep = [j for j, i in enumerate(item_ids) if i in catalog.row]
    rows = np.array([catalog.row[item_ids[j]] for j in keep], dtype=np.int64)
    if bm25 is not None and len(bm25):
        bm25 = np.asarray(bm25, dtype=np.float64)[keep]
    return rows, candidate_features(ctx, rows, catalog, bm25)


def ranked_rows(ctx: RankContext, item_ids: list[str], catalog: Catalog, scorers: list[Scorer], k: int,
                bm25: np.ndarray | None = None) -> list[np.ndarray]:
    """The top-k rows `rank_candidates` returns (no diversity) for each of `scorers`, the features
    computed once: what fitting search weights over a grid ranks with."""
    rows, x = _known_candidates(ctx, item_ids, catalog, bm25)
    scorers = [s.for_context(ctx) for s in scorers]
    if all(isinstance(s, HandWeights) for s in scorers):  # every score at once, summed as HandWeights.score sums
        w = np.stack([s.vector(ctx.mode) for s in scorers])
        scores = (x[None, :, :] * w[:, None, :]).sum(axis=2)
        return list(rows[np.argsort(-scores, axis=1, kind="stable")[:, :k]])  # mmr's order without diversity
    vecs = catalog.vectors[rows]
    return [rows[mmr(s.score(x, ctx.mode), vecs, k, 0.0)] for s in scorers]
