"""Offline evaluation without Ray: the methods compared on the requests of
features/evaluation/splits.py, their metrics, and search relevance from judgments.

Every method ranks the FULL catalog (no sampled negatives) and returns its top L (L = max k),
with the same exclusions (the request's `exclude` rows).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl

from features import metrics as M
from features.data import schema as S
from features.evaluation import baselines as B
from features.evaluation.splits import Requests
from features.profiles.profile import ProfileParams
from features.retrieval.catalog import Catalog
from features.retrieval.lexical import BM25
from features.retrieval.live import LiveCatalog
from features.retrieval.ranking import (
    RankContext,
    Scorer,
    attach_als,
    attach_ease,
    attach_sequence,
    candidate_features,
    context_for,
    rank_candidates,
)


# --- methods ------------------------------------------------------------------------------------
@dataclass
class MethodResult:
    name: str
    lists: np.ndarray  # (Q, L) catalog rows
    latency_ms: np.ndarray  # (Q,) per-request scoring time, in process
    note: str = ""
    per_request: dict[str, np.ndarray] | None = None  # filled by score_method: metric -> (Q,)


class Progress:
    """A line every `every_s` seconds while a request loop runs (`  name: 12,000 of 58,000 requests,
    410/s, about 1.9 min left`), nothing for a loop shorter than that: a shop's log of tens of
    thousands of shoppers keeps these loops busy for many minutes."""

    def __init__(self, name: str, n: int, every_s: float = 30.0) -> None:
        self.name, self.n, self.every_s = name, n, every_s
        self.t0 = self.last = time.perf_counter()

    def step(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every_s and done < self.n:
            self.last = now
            rate = done / (now - self.t0)
            print(f"  {self.name}: {done:,} of {self.n:,} requests, {rate:,.0f}/s, about "
                  f"{(self.n - done) / max(rate, 1e-9) / 60:.1f} min left", flush=True)


def timed_method(name: str, n: int, L: int, fn: Callable[[int], list[int]], note: str = "") -> MethodResult:
    lists = np.full((n, L), -1, dtype=np.int64)
    lat = np.zeros(n)
    progress = Progress(name, n)
    for q in range(n):
        progress.step(q)
        t0 = time.perf_counter()
        rows = fn(q)[:L]
        lat[q] = (time.perf_counter() - t0) * 1e3
        lists[q, : len(rows)] = rows
    return MethodResult(name, lists, lat, note)


def top_excluding(scores: np.ndarray, L: int, ex_rows: np.ndarray) -> list[int]:
    s = np.asarray(scores, dtype=np.float64).copy()
    if len(ex_rows):
        s[ex_rows] = -np.inf
    top = np.argpartition(-s, min(L, len(s) - 1))[:L] if len(s) > L else np.arange(len(s))
    top = top[np.argsort(-s[top], kind="stable")]
    return [int(r) for r in top if np.isfinite(s[r])]


def exclude_rows(reqs: Requests, catalog: Catalog) -> list[np.ndarray]:
    return [catalog.rows(sorted(ex)) for ex in reqs.exclude]


# Popularity is one array for every request, or a function q -> array where it depends on the
# request's time (features/evaluation/point_in_time.py).
PerRequest = np.ndarray | Callable[[int], np.ndarray]


def per_request(x: PerRequest) -> Callable[[int], np.ndarray]:
    return x if callable(x) else (lambda q: x)


def rows_in(src: Catalog, dst: Catalog) -> np.ndarray:
    """dst's row of each of src's rows (-1 where dst lacks the item). Two indexes of one features
    version hold the same items but not necessarily in the same order (the index job's actors
    finish in any order), so a row of one catalog is never a row of another."""
    return np.array([dst.row.get(i, -1) for i in src.item_ids], np.int64)


def fallback_in(fallback: PerRequest, src: Catalog, dst: Catalog) -> PerRequest:
    """Per-item scores over src's rows (popularity) re-indexed to dst's rows (0 for an item src lacks)."""
    at = rows_in(dst, src)
    fb = per_request(fallback)

    def one(q: int) -> np.ndarray:
        return np.where(at >= 0, fb(q)[np.maximum(at, 0)], 0.0)
    return one


def lists_in(res: MethodResult, src: Catalog, dst: Catalog) -> MethodResult:
    """The method's lists (rows of src, -1 padded) as rows of dst, so that every method is scored
    in one catalog's rows."""
    to = rows_in(src, dst)
    res.lists = np.where(res.lists >= 0, to[np.maximum(res.lists, 0)], -1)
    return res


def popularity_method(name: str, scores: PerRequest, reqs: Requests, catalog: Catalog, L: int) -> MethodResult:
    ex = exclude_rows(reqs, catalog)
    at = per_request(scores)
    return timed_method(name, len(reqs), L, lambda q: top_excluding(at(q), L, ex[q]))


def cooccurrence_method(reqs: Requests, catalog: Catalog, fallback: PerRequest, L: int,
                        note: str = "") -> MethodResult:
    ex = exclude_rows(reqs, catalog)
    fb = per_request(fallback)

    def one(q: int) -> list[int]:
        prof = reqs.profiles[q]
        hist = [i for i, _, _ in prof.recent_items] if prof is not None else []
        out = B.cooccurrence_lists(catalog.cooc, [hist], catalog.row, fb(q), L, [set(ex[q].tolist())])
        return [int(r) for r in out[0] if r >= 0]

    return timed_method("co-occurrence", len(reqs), L, one, note=note)


def blend_scores(hist: list[str], catalog: Catalog, pop_norm: np.ndarray, weight: float) -> np.ndarray:
    """co-occurrence with the last 10 items (discounted 0.85 per step, as `cooccurrence_lists`)
    + weight * popularity scaled to [0, 1]."""
    s = weight * pop_norm
    for r, v in B.cooccurrence_scores(catalog.cooc, hist, catalog.row).items():
        s[r] += v
    return s


def blend_method(name: str, reqs: Requests, catalog: Catalog, pop: PerRequest, weight: float, L: int,
                 note: str = "") -> MethodResult:
    """The "co-occurrence + recent popularity" baseline (weight chosen on validation requests)."""
    ex = exclude_rows(reqs, catalog)
    pop_at = per_request(pop)

    def one(q: int) -> list[int]:
        prof = reqs.profiles[q]
        hist = [i for i, _, _ in prof.recent_items] if prof is not None else []
        p = pop_at(q)
        pop_norm = p / max(float(p.max(initial=0.0)), 1e-12)
        return top_excluding(blend_scores(hist, catalog, pop_norm, weight), L, ex[q])

    return timed_method(name, len(reqs), L, one, note=note)


def history_method(name: str, reqs: Requests, catalog: Catalog, model, fallback: PerRequest, L: int,
                   note: str) -> MethodResult:
    """A model that scores a history (`item_ids`, `scores(history)`: EASE with its dense weights,
    features/data/ease.py's EaseModel, not serving's top-M table; or baselines.AlsModel) from every
    item the shopper had before the request: their purchases (the excluded items) and the replayed
    profile's recent positive items. Items it cannot score, and shoppers without a history, are
    ordered by `fallback` (popularity)."""
    ex = exclude_rows(reqs, catalog)
    fb = per_request(fallback)
    known = np.array([i in catalog.row for i in model.item_ids], dtype=bool)
    rows = catalog.rows(model.item_ids)
    positive = set(S.POSITIVE_EVENT_TYPES)

    def one(q: int) -> list[int]:
        prof = reqs.profiles[q]
        hist = set(reqs.exclude[q])  # purchases before the request and the items already in the session
        if prof is not None:
            hist |= {i for i, t, _ in prof.recent_items if t in positive} | set(prof.purchased)
        p = fb(q)
        s = 1e-9 * p / max(float(p.max(initial=0.0)), 1e-12)
        s[rows] += model.scores(sorted(hist))[known]
        return top_excluding(s, L, ex[q])

    return timed_method(name, len(reqs), L, one, note=note + "; the strongest popularity orders what it cannot score "
                        "and shoppers without a history")


def sequence_method(name: str, reqs: Requests, catalog: Catalog, scorer, fallback: PerRequest, L: int) -> MethodResult:
    """A behaviour model (features/models/sequence.py's SequenceScorer bound to `catalog`) scoring
    the whole catalog from the replayed profile's recent items, as serving does; shoppers without
    a history get `fallback`."""
    ex = exclude_rows(reqs, catalog)
    fb = per_request(fallback)

    def one(q: int) -> list[int]:
        prof = reqs.profiles[q]
        u = scorer.user_vector(prof.recent_items, catalog.row) if prof is not None else None
        return top_excluding(fb(q) if u is None else scorer.vectors @ u, L, ex[q])

    return timed_method(name, len(reqs), L, one, note="the strongest popularity for shoppers without a history")


def embedding_method(name: str, reqs: Requests, catalog: Catalog, params: ProfileParams, fallback: PerRequest,
                     L: int) -> MethodResult:
    """The user vector of the replayed profile (serving's formula) against every item vector;
    users without a vector get `fallback` (popularity), as serving's cold start does."""
    ex = exclude_rows(reqs, catalog)
    vecs = catalog.vectors
    fb = per_request(fallback)

    def one(q: int) -> list[int]:
        prof = reqs.profiles[q]
        u = prof.user_vector(float(reqs.ts[q]), params)[0] if prof is not None else None
        return top_excluding(fb(q) if u is None else vecs @ u, L, ex[q])

    return timed_method(name, len(reqs), L, one, note="popularity for users without a vector")


def system_methods(scorers: list[tuple[str, Scorer]], reqs: Requests, live: LiveCatalog, params: ProfileParams,
                   L: int, clock: Callable[[float], None] | None = None) -> list[MethodResult]:
    """Serving's recommend path, function for function, for each (name, scorer): the profile's
    context and LiveCatalog.recommend candidates once per request, then rank_candidates (features,
    scorer) -> top L with each scorer. A method's latency is what one serving request costs without
    its reasons (no baseline has any; explaining L = 50 items took 20 of a learned ranking's 23 ms
    on the demo's artifacts): the shared part's time plus its own ranking's. `clock(t)`, if given,
    sets the catalog's popularity to the request's time first (point_in_time.catalog_clock)."""
    cat, n = live.catalog, len(reqs)
    lists = [np.full((n, L), -1, dtype=np.int64) for _ in scorers]
    lat = np.zeros((len(scorers), n))
    progress = Progress(" / ".join(name for name, _ in scorers), n)
    for q in range(n):
        progress.step(q)
        t0 = time.perf_counter()
        if clock is not None:
            clock(float(reqs.ts[q]))
        ctx = context_for("recommend", reqs.profiles[q], float(reqs.ts[q]), params)
        ids = live.recommend(ctx.user_vector(), [i for i, _ in ctx.recent_items], None, None, reqs.exclude[q],
                             attach_sequence(ctx, cat), attach_ease(ctx, cat), attach_als(ctx, cat))
        shared = time.perf_counter() - t0
        for m, (_, scorer) in enumerate(scorers):
            t1 = time.perf_counter()
            rows = [r.row for r in rank_candidates(ctx, ids, cat, scorer, L, explain=False)][:L]
            lat[m, q] = (shared + time.perf_counter() - t1) * 1e3
            lists[m][q, : len(rows)] = rows
    return [MethodResult(name, lists[m], lat[m]) for m, (name, _) in enumerate(scorers)]


def candidate_lists(reqs: Requests, live: LiveCatalog, params: ProfileParams,
                    clock: Callable[[float], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The ranker's training rows: for each request, serving's recommend candidates with their
    features and label 1 for a relevant item (popularity of the request's time where `clock` is
    given, as in `system_methods`). Returns (X, y, group ids, stats incl. candidate recall)."""
    xs, ys, gs = [], [], []
    found = 0
    progress = Progress("candidate lists", len(reqs))
    for q in range(len(reqs)):
        progress.step(q)
        if clock is not None:
            clock(float(reqs.ts[q]))
        ctx = context_for("recommend", reqs.profiles[q], float(reqs.ts[q]), params)
        ids = live.recommend(ctx.user_vector(), [i for i, _ in ctx.recent_items], None, None, reqs.exclude[q],
                             attach_sequence(ctx, live.catalog), attach_ease(ctx, live.catalog),
                             attach_als(ctx, live.catalog))
        rows = live.catalog.rows(ids)
        y = np.array([live.catalog.item_ids[r] in reqs.relevant[q] for r in rows], dtype=np.float64)
        found += int(y.sum() > 0)
        xs.append(candidate_features(ctx, rows, live.catalog))
        ys.append(y)
        gs.append(np.full(len(rows), q, dtype=np.int64))
    x = np.concatenate(xs) if xs else np.zeros((0, 0), np.float32)
    stats = {"requests": len(reqs), "rows": int(sum(len(y) for y in ys)),
             "requests_with_a_relevant_candidate": found,
             "candidate_hit_rate": found / len(reqs) if len(reqs) else 0.0}
    return x, (np.concatenate(ys) if ys else np.zeros(0)), (np.concatenate(gs) if gs else np.zeros(0, np.int64)), stats


# --- metrics of a method ------------------------------------------------------------------------
def score_method(res: MethodResult, reqs: Requests, catalog: Catalog, ks: tuple[int, ...],
                 item_share: np.ndarray, n_users: int) -> dict:
    # An item outside the catalog must still count in |relevant|: give each its own negative id.
    relevant = [{r if r >= 0 else -2 - j for j, r in enumerate(rel_rows)} for rel_rows in
                ([catalog.row.get(i, -1) for i in rel] for rel in reqs.relevant)]
    out: dict = {"method": res.name, "requests": len(reqs)}
    res.per_request = M.per_request_metrics(res.lists, relevant, ks)
    out |= {k: round(float(v.mean()), 6) for k, v in res.per_request.items()}
    out["ci95"] = {k: [round(x, 6) for x in M.bootstrap_ci(v)] for k, v in res.per_request.items()
                   if k.startswith("ndcg@") or k == "mrr"}
    for k in ks:
        out |= {key: round(v, 6) for key, v in M.set_metrics_at_k(res.lists, relevant, k).items()
                if not key.startswith("recall@")}  # recall@k is list_metrics' (capped at k)
        out[f"coverage@{k}"] = round(M.catalog_coverage(res.lists, len(catalog), k), 6)
    k0 = ks[0]
    out[f"diversity@{k0}"] = round(M.intra_list_diversity(res.lists, catalog.vectors, k0), 6)
    out[f"novelty@{k0}"] = round(M.novelty(res.lists, item_share, k0, n_users), 6)
    lat = res.latency_ms
    out["latency_ms"] = {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99), "mean": round(float(lat.mean()), 3) if len(lat) else 0.0}
    if res.note:
        out["note"] = res.note
    return out


def percentile(a: np.ndarray, q: float) -> float:
    return round(float(np.percentile(a, q)), 3) if len(a) else 0.0


def item_shares(events: pl.DataFrame, catalog: Catalog) -> tuple[np.ndarray, int]:
    """(share of users who interacted with each item, number of users) from training events."""
    pos = events.filter(pl.col(S.EVENT_TYPE).is_in(list(S.POSITIVE_EVENT_TYPES)) & pl.col(S.ITEM_ID).is_not_null())
    n_users = max(pos[S.USER_ID].n_unique(), 1)
    per = pos.group_by(S.ITEM_ID).agg(pl.col(S.USER_ID).n_unique().alias("u"))
    share = np.zeros(len(catalog))
    for item, u in per.iter_rows():
        r = catalog.row.get(item)
        if r is not None:
            share[r] = u / n_users
    return share, n_users


# --- search relevance (judgments) ---------------------------------------------------------------
@dataclass
class Judgments:
    queries: list[str]
    items: list[list[int]]  # judged catalog rows per query
    grades: list[np.ndarray]

    @classmethod
    def from_frame(cls, df: pl.DataFrame, catalog: Catalog) -> "Judgments":
        for col in ("query", S.ITEM_ID, "grade"):
            if col not in df.columns:
                raise ValueError(f"judgments: missing column '{col}'; required: query, item_id, grade")
        unknown = df.filter(~pl.col(S.ITEM_ID).is_in(list(catalog.row)))
        if unknown.height:
            raise ValueError(f"judgments: {unknown.height} rows name items not in the catalog, "
                             f"e.g. item_id={unknown[S.ITEM_ID][0]!r}")
        qs, items, grades = [], [], []
        for (q,), g in df.group_by("query", maintain_order=True):
            qs.append(str(q))
            items.append([catalog.row[i] for i in g[S.ITEM_ID].to_list()])
            grades.append(g["grade"].cast(pl.Float64).to_numpy())
        return cls(qs, items, grades)


def query_folds(n_queries: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number of each query (cross-validation by query: a query's judgments never train the
    model that is scored on it)."""
    if folds < 2:
        raise ValueError(f"search.folds must be >= 2, got {folds}")
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n_queries) % folds)


def search_context(query: str, q_emb: np.ndarray) -> RankContext:
    return RankContext(mode="search", query=query, query_emb=q_emb)


def judged_features(j: Judgments, q: int, q_emb: np.ndarray, catalog: Catalog, bm25: BM25) -> np.ndarray:
    """Features of the judged items of query q (see `query_features`)."""
    return query_features(j.queries[q], q_emb, np.asarray(j.items[q], dtype=np.int64), catalog, bm25)


def judged_features_many(j: Judgments, qs: list[int], vectors: np.ndarray, catalog: Catalog, bm25: BM25,
                         chunk: int = 256) -> list[np.ndarray]:
    """`judged_features` of each query of `qs` with its vector (`vectors[i]` is `qs[i]`'s), the
    catalog-wide cosines of `chunk` queries at a time in one matrix product: one query's own product
    reads the whole catalog's vectors from memory (4 ms at 55,000 items), as many take little more."""
    vectors = np.asarray(vectors, np.float32)
    out = []
    for a in range(0, len(qs), chunk):
        cos = vectors[a:a + chunk] @ catalog.vectors.T
        out.extend(query_features(j.queries[q], vectors[a + i], np.asarray(j.items[q], dtype=np.int64), catalog, bm25,
                                  cos=cos[i]) for i, q in enumerate(qs[a:a + chunk]))
    return out


def query_features(query: str, q_emb: np.ndarray, rows: np.ndarray, catalog: Catalog, bm25: BM25,
                   cos: np.ndarray | None = None) -> np.ndarray:
    """Search features of any item set, scaled by the catalog-wide best BM25 and cosine of the
    query: what serving's candidates (always holding the top hits of both) are scaled by, with
    their dense and lexical ranks over the whole catalog (serving's are the same at the top).
    `cos`: the query's cosine with every catalog row, where the caller has it already."""
    raw = bm25.scores(query, len(catalog))
    cos = catalog.vectors @ q_emb if cos is None else cos
    rows = np.asarray(rows, dtype=np.int64)
    # Each row's place in the whole catalog's dense list, and in the lexical list of the items with a
    # match (-1 without one; every match scores above every non-match, so its place in the full
    # sort is its place among the matches).
    dense = M.sort_positions(cos, rows).astype(np.float64)
    lexical = np.where(raw[rows] > 0, M.sort_positions(raw, rows), -1).astype(np.float64)
    return candidate_features(search_context(query, q_emb), rows, catalog, raw[rows], bm25_max=float(raw.max()),
                              query_sim_max=float(cos.max()), ranks=(dense, lexical))
