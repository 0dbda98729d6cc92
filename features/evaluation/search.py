"""Search-relevance evaluation helpers (no Ray): each judged query's retrieval pool, per-query
nDCG with bootstrap intervals, the paired verdict against the strongest baseline, and the search
fit's choices (the query adapter, the fusion, the match weights of the search ranking), each fitted
and judged out of fold, that jobs.train_search and jobs.evaluate share."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from features import metrics as M
from features.evaluation.methods import Judgments, search_context
from features.models import query_adapter as QA
from features.retrieval.fusion import FusionParams, Pool, fusion_grid, fusion_ndcg_per_query
from features.retrieval.live import LiveCatalog
from features.retrieval.ranking import HandWeights, Scorer, ranked_rows


def gains_of(j: Judgments, q: int) -> dict[int, float]:
    """Catalog row -> gain 2^(grade-1) - 1 of query q's judged items."""
    return dict(zip(np.asarray(j.items[q]).tolist(), M.grade_gain(j.grades[q]).tolist()))


def pool(live: LiveCatalog, j: Judgments, q: int, q_emb: np.ndarray) -> Pool:
    """Query q's retrieval pool as serving builds it (both retrievers' top lists), with gains
    (unjudged candidates gain 0)."""
    rows, cos, bm, in_dense, in_lexical = live.search_pool(j.queries[q], q_emb)
    g = gains_of(j, q)
    return Pool(cos, bm, in_dense, in_lexical, np.array([g.get(int(r), 0.0) for r in rows]), M.grade_gain(j.grades[q]))


def ranked_gains(j: Judgments, q: int, rows) -> np.ndarray:
    g = gains_of(j, q)
    return np.array([g.get(int(r), 0.0) for r in rows])


def dense_ndcg_per_query(j: Judgments, qv: np.ndarray, item_vecs: np.ndarray, qs: list[int], k: int = 10) -> np.ndarray:
    """nDCG@k per query (of `qs`) of dense retrieval over the whole catalog with query vectors `qv`
    (one row per query of `j`)."""
    return dense_ndcg_of(j, qv[qs], item_vecs, qs, k)


def dense_ndcg_of(j: Judgments, vectors: np.ndarray, item_vecs: np.ndarray, qs: list[int], k: int = 10) -> np.ndarray:
    """nDCG@k per query of dense retrieval over the whole catalog, `vectors[i]` being query `qs[i]`'s."""
    top = top_k_rows(np.asarray(vectors, np.float32), item_vecs, k)
    return M.graded_ndcg_per_query([ranked_gains(j, q, t) for q, t in zip(qs, top)],
                                   [M.grade_gain(j.grades[q]) for q in qs], k)


def top_k_rows(queries: np.ndarray, item_vecs: np.ndarray, k: int, chunk: int = 512) -> np.ndarray:
    """(n, k) catalog rows of each query's k highest dot products, best first, ties to the lower row
    (`features.metrics.top_k` of each row), in chunks of queries, so a large catalog never needs a (queries x catalog)
    matrix."""
    k = min(k, len(item_vecs))
    out = np.empty((len(queries), k), np.int64)
    for a in range(0, len(queries), chunk):
        s = queries[a:a + chunk] @ item_vecs.T
        for i in range(len(s)):
            out[a + i] = M.top_k(s[i], k)
    return out


def beats(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """Whether per-query scores `a` beat `b` as this project defines it (the paired 95% bootstrap
    interval of the difference is above 0), with the difference and interval. Every learned part
    of search is used only where it beats its default on validation queries in this sense: on a
    few dozen queries a higher mean alone is mostly noise."""
    p = paired(a, b, seed)
    return {"beats": p["paired_difference_ci95"][0] > 0, **p}


nanmean = M.nanmean  # the mean over queries with a relevant item


def fit_query_adapter(j: Judgments, q_emb: np.ndarray, item_vecs: np.ndarray, qs: list[int],
                      p: QA.AdapterParams, folds: int = 5, seed: int = 0
                      ) -> tuple[QA.QueryAdapter | None, dict, dict[int, np.ndarray]]:
    """The query tower's adapter trained on queries `qs` (rows of `q_emb`), its epoch count chosen
    by `folds`-fold cross-validation over them (QA.cross_validate_adapter), and returned only where
    its out-of-fold full-catalog nDCG@10 of dense retrieval beats the zero-shot vectors' (`beats`:
    the paired interval over the held-out queries above 0). Queries without a relevant item teach
    and judge nothing and are left out.

    Returns (the adapter or None, its report, the query vectors to fit what comes after it on:
    query -> vector). With the adapter kept these are the held-out queries' out-of-fold vectors, as
    the adapter will be on queries it never saw; the final adapter's own vectors of its training
    queries would make dense retrieval look better than it is. Without it, every query's zero-shot
    vector."""
    zero_shot = {q: q_emb[q] for q in qs}
    qs = [q for q in qs if (M.grade_gain(j.grades[q]) > 0).any()]
    k = min(folds, len(qs))
    if k < 2:
        return None, {"used": False, "why_not": f"{len(qs)} fitting quer{'y' if len(qs) == 1 else 'ies'} with a "
                                                "relevant item: too few to cross-validate an adapter"}, zero_shot
    at = np.asarray(qs)
    adapter, oof, zero, vecs, info = QA.cross_validate_adapter(
        q_emb[at], [QA.Targets(np.asarray(j.items[q]), M.grade_gain(j.grades[q])) for q in qs], item_vecs,
        lambda v, which: dense_ndcg_of(j, v, item_vecs, at[which].tolist()), p, k)
    won = beats(oof, zero, seed)
    report = {"used": won["beats"], "cross_validated_vs_zero_shot": won, **{key: v for key, v in info.items() if key != "params"}}
    if not won["beats"]:
        return None, report, zero_shot
    return adapter, report, {int(q): vecs[i] for i, q in enumerate(at) if not np.isnan(vecs[i, 0])}


def choose_out_of_fold(table: np.ndarray, folds: int, seed: int = 0) -> tuple[int, dict | None]:
    """One choice among candidates from per-query scores `table` (queries x candidates, column 0 the
    configured one): the column with the best mean (column 0 wins ties), and the verdict of choosing
    that way out of fold (`folds`-fold cross-validation over the queries: each fold scored with the
    column best on the others) against column 0 (`beats`), or None with fewer than 2 queries."""
    best = int(np.argmax(np.nanmean(table, axis=0))) if len(table) else 0
    n_folds = min(folds, len(table))
    if n_folds < 2:
        return best, None
    fold = np.random.default_rng(seed).permutation(np.arange(len(table)) % n_folds)
    oof = np.full(len(table), np.nan)
    for f in range(n_folds):
        oof[fold == f] = table[fold == f, int(np.argmax(np.nanmean(table[fold != f], axis=0)))]
    return best, beats(oof, table[:, 0], seed)


def _verdict(report: dict, best: int, won: dict | None, what: str, n: int) -> dict:
    """The report of a choice made by `choose_out_of_fold`: kept only where a non-default column won."""
    if won is None:
        return report | {"kept": False, "why_not": f"{n} judged quer{'y' if n == 1 else 'ies'}: too few to cross-validate {what}"}
    return report | {"kept": bool(won["beats"] and best > 0), "cross_validated_vs_configured": won}


def choose_fusion(pools: list[Pool], default: FusionParams, folds: int = 5, seed: int = 0, k: int = 10
                  ) -> tuple[FusionParams, dict]:
    """The fusion of dense and lexical retrieval for these judged queries' pools: the best of
    `fusion_grid` on all of them, kept only where choosing that way beats
    `default` out of fold (`choose_out_of_fold`). Returns (the fusion to use, a report)."""
    grid = fusion_grid(default)
    table = np.column_stack([fusion_ndcg_per_query(pools, p, k) for p in grid]) if pools else np.zeros((0, len(grid)))
    best, won = choose_out_of_fold(table, folds, seed)
    means = np.nanmean(table, axis=0) if len(pools) else np.zeros(len(grid))
    report = _verdict({"fitted": grid[best].describe(),
                       "grid_fit_ndcg@10": {p.describe(): round(float(m), 6) for p, m in zip(grid, means)}},
                      best, won, "the fusion", len(pools))
    return (grid[best] if report["kept"] else default), report


# The search ranking's match weights tried per shop, alone and together: on query-term coverage of
# the title (`title_match`), on the query naming what the title names (`head_match`) and on the
# query's word pairs in the title (`phrase_match`).
MATCH_WEIGHTS: dict[str, tuple[float, ...]] = {"title_match": (0.1, 0.2, 0.4, 0.7), "head_match": (0.1, 0.2, 0.4),
                                               "phrase_match": (0.1, 0.2, 0.4)}
SEARCH_WEIGHT_GRID: tuple[dict[str, float], ...] = tuple(
    {name: w for name, w in zip(MATCH_WEIGHTS, ws) if w}
    for ws in itertools.product(*((0.0, *grid) for grid in MATCH_WEIGHTS.values())) if any(ws))


def describe_weights(fitted: dict[str, float]) -> str:
    """'title weight 0.4, head weight 0.2' for a fit of `choose_search_weights` (none: 'match weights as configured')."""
    names = {"title_match": "title weight", "head_match": "head weight", "phrase_match": "phrase weight"}
    return ", ".join(f"{names.get(k, k)} {v:g}" for k, v in fitted.items()) or "match weights as configured"


def ranked_ndcg_per_query(live: LiveCatalog, j: Judgments, vectors: dict[int, np.ndarray], weights: list[Scorer],
                          fusion: FusionParams, k: int = 10) -> np.ndarray:
    """(queries of `vectors`, in its order) x (scorers: hand weights or a learned ranker) full-catalog
    nDCG@k of ranking each query as serving ranks it: its candidates from `live` with `fusion`,
    ordered by `rank_candidates` with that scorer (`ranked_rows`; NaN without a relevant item)."""
    table = np.full((len(vectors), len(weights)), np.nan)
    for i, (q, v) in enumerate(vectors.items()):
        ids, _, bm = live.search(j.queries[q], v, fusion=fusion)
        g = gains_of(j, q)
        tops = ranked_rows(search_context(j.queries[q], v), ids, live.catalog, weights, k, bm)
        gains = np.zeros((len(tops), k))
        for c, top in enumerate(tops):
            gains[c, :len(top)] = [g.get(r, 0.0) for r in top.tolist()]
        table[i] = M.graded_ndcg_of_lists(gains, M.grade_gain(j.grades[q]), k)
    return table


def choose_search_weights(live: LiveCatalog, j: Judgments, vectors: dict[int, np.ndarray], hand: HandWeights,
                          fusion: FusionParams, folds: int = 5, seed: int = 0, k: int = 10
                          ) -> tuple[HandWeights, dict]:
    """The search hand weights with match weights (SEARCH_WEIGHT_GRID) fitted on these
    judged queries (`vectors`: query -> the vector it is ranked with), ranked as serving ranks them
    (`ranked_ndcg_per_query`), kept only where fitting beats the configured weights out of fold
    (`folds`-fold cross-validation; `beats` as for the adapter). Returns (the weights to use, a
    report)."""
    qs = sorted(q for q in vectors if (M.grade_gain(j.grades[q]) > 0).any())
    grid = [hand] + [replace(hand, search={**hand.search, **w}) for w in SEARCH_WEIGHT_GRID]
    table = ranked_ndcg_per_query(live, j, {q: vectors[q] for q in qs}, grid, fusion, k)
    best, won = choose_out_of_fold(table, folds, seed)
    means = np.nanmean(table, axis=0) if len(qs) else np.zeros(len(grid))
    label = [",".join(f"{n}={v:g}" for n, v in w.items()) for w in SEARCH_WEIGHT_GRID]
    report = _verdict({"fitted": dict(SEARCH_WEIGHT_GRID[best - 1]) if best else {},
                       "grid_ndcg@10": {"configured": round(float(means[0]), 6),
                                        **{lab: round(float(m), 6) for lab, m in zip(label, means[1:])}}},
                      best, won, "the weights", len(qs))
    return (grid[best] if report["kept"] else hand), report


def per_query_ndcg(lists: list[np.ndarray], ideal: list[np.ndarray], ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """metric -> (Q,) nDCG@k per query (NaN for a query without a relevant item)."""
    return {f"ndcg@{k}": M.graded_ndcg_per_query(lists, ideal, k) for k in ks}


def summarize(name: str, per_query: dict[str, np.ndarray], seed: int = 0) -> dict:
    """A method's row: mean nDCG@k over queries with a relevant item, and its 95% bootstrap interval."""
    row: dict = {"method": name}
    ci: dict[str, list[float]] = {}
    for metric, v in per_query.items():
        row[metric] = round(M.nanmean(v), 6)
        ci[metric] = [round(x, 6) for x in M.bootstrap_ci(v[~np.isnan(v)], seed=seed)]
    row["ci95"] = ci
    return row


def paired(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """Mean of a - b over the queries both score, with its 95% bootstrap interval (paired by query)."""
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    lo, hi = M.bootstrap_ci(d, seed=seed)
    return {"paired_difference": round(float(d.mean()), 6) if len(d) else 0.0,
            "paired_difference_ci95": [round(lo, 6), round(hi, 6)], "queries": int(keep.sum())}


def verdict(rows: list[dict], per_query: dict[str, dict[str, np.ndarray]], system: str, hand: str,
            baselines: list[str], key: str, seed: int = 0) -> dict:
    """The full system against the strongest baseline (by mean `key`) and against BM25-style
    baselines: paired differences with intervals; "beats" means the interval excludes 0."""
    by = {r["method"]: r for r in rows}
    best = max(baselines, key=lambda m: by[m][key])
    p = paired(per_query[system][key], per_query[best][key], seed)
    mine, base = by[system][key], by[best][key]
    return {"metric": key, "full_system": mine, "full_system_ci95": by[system]["ci95"][key],
            "strongest_baseline": best, "strongest_baseline_value": base,
            "strongest_baseline_ci95": by[best]["ci95"][key], **p,
            "ratio_to_strongest_baseline": round(mine / base, 4) if base > 0 else None,
            "full_beats_strongest_baseline": p["paired_difference_ci95"][0] > 0,
            "learned_vs_hand": [mine, by[hand][key]], "learned_beats_hand": mine > by[hand][key]}
