"""The one fusion function: reciprocal-rank and weighted fusion by hand, and serving's search
order is exactly fuse() over its candidate pool (the evaluation calls the same function)."""

from __future__ import annotations

import numpy as np
import pytest

from features.retrieval.fusion import FusionParams, Pool, fuse, fusion_grid, fusion_ndcg
from features.retrieval.live import LiveCatalog, RetrievalConfig
from tests.helpers import small_catalog


def test_rrf_by_hand():
    cos = np.array([0.9, 0.1, 0.5])
    bm25 = np.array([0.0, 3.0, 1.0])  # candidate 0 has no lexical match: it is in the dense list only
    k = 60
    expected = [1 / (k + 1), 1 / (k + 3) + 1 / (k + 1), 1 / (k + 2) + 1 / (k + 2)]
    np.testing.assert_allclose(fuse(cos, bm25, "rrf", k), expected)
    # membership given by the caller (what each retriever returned)
    got = fuse(cos, bm25, "rrf", k, in_dense=np.array([True, False, True]), in_lexical=np.array([False, True, False]))
    np.testing.assert_allclose(got, [1 / (k + 1), 1 / (k + 1), 1 / (k + 2)])


def test_weighted_by_hand_and_bad_method():
    np.testing.assert_allclose(fuse(np.array([0.2, 0.8]), np.array([4.0, 2.0]), "weighted", ann_weight=0.25),
                               [0.25 * 0.2 + 0.75 * 1.0, 0.25 * 0.8 + 0.75 * 0.5])
    with pytest.raises(ValueError, match="allowed: 'rrf', 'weighted'"):
        fuse(np.zeros(1), np.zeros(1), "max")


@pytest.mark.parametrize("method", ["rrf", "weighted"])
def test_serving_search_orders_its_pool_by_fuse(method):
    cat, index = small_catalog()
    n = 8
    live = LiveCatalog(cat, index, None, RetrievalConfig(num_candidates=n, fusion=method, ann_weight=0.3))
    q = cat.vectors[cat.row["i007"]]
    ids, _, _ = live.search("green lamp", q)
    # the pool by hand: the n nearest by cosine (a flat index is exact) and the n best BM25 matches
    cos_all = cat.vectors @ q
    bm_all = live.bm25.scores("green lamp", len(cat))
    dense = np.argsort(-cos_all, kind="stable")[:n]
    hits = np.flatnonzero(bm_all > 0)
    lexical = hits[np.argsort(-bm_all[hits], kind="stable")[:n]]
    pool = np.union1d(dense, lexical)
    fused = fuse(cos_all[pool], bm_all[pool], method, 60, 0.3, np.isin(pool, dense), np.isin(pool, lexical))
    expected = [cat.item_ids[r] for r in pool[np.argsort(-fused, kind="stable")[:n]]]
    assert ids == expected
    assert set(ids) & {cat.item_ids[r] for r in lexical} and set(ids) & {cat.item_ids[r] for r in dense}


def _pool(cos, bm, gains) -> Pool:
    cos, bm, gains = (np.asarray(a, np.float64) for a in (cos, bm, gains))
    return Pool(cos, bm, np.ones(len(cos), bool), bm > 0, gains, gains[gains > 0])


def test_the_fit_picks_the_grid_point_with_the_best_ndcg_and_the_default_on_ties():
    from features.evaluation.search import choose_fusion

    rng = np.random.default_rng(0)
    pools = []
    for _ in range(30):  # dense scores follow the gains, BM25 is noise: the fit must lean on dense
        gains = np.zeros(40)
        gains[rng.choice(40, 5, replace=False)] = rng.integers(1, 4, 5)
        pools.append(_pool(gains + 0.3 * rng.random(40), rng.random(40) * 5, gains))
    chosen, rep = choose_fusion(pools, FusionParams())
    grid = rep["grid_fit_ndcg@10"]
    best = next(p for p in fusion_grid() if p.describe() == rep["fitted"])
    assert best.method == "weighted" and best.ann_weight >= 0.5  # earliest grid point of the best score
    assert grid[best.describe()] == max(grid.values()) > grid[FusionParams().describe()]
    assert fusion_ndcg(pools, best) == pytest.approx(grid[best.describe()], abs=1e-6)
    assert chosen == (best if rep["kept"] else FusionParams())
    flat = [_pool(np.zeros(5), np.zeros(5), np.array([1.0, 0, 0, 0, 0]))] * 3  # every fusion orders these alike
    assert choose_fusion(flat, FusionParams("rrf", 20))[1]["fitted"] == "rrf, k=20"
    assert choose_fusion([], FusionParams())[0] == FusionParams()
    assert [p.describe() for p in fusion_grid(FusionParams("rrf", 20))][:2] == ["rrf, k=20", "rrf, k=5"]
    assert len({p.describe() for p in fusion_grid()}) == len(fusion_grid())  # the default is not tried twice