"""EASE item-to-item weights: the closed form against a per-column solve, lambda on the holdout,
the neighbour table, and how serving and evaluation read it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from features.data import ease as E
from features.data import schema as S
from features.data.transforms import FeatureParams
from features.retrieval.catalog import ItemNeighbours
from features.retrieval.live import LiveCatalog, RetrievalConfig
from features.retrieval.ranking import FEATURE_NAMES, RankContext, attach_ease, candidate_features
from tests.helpers import small_catalog

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _pairs(baskets: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(u, i, T0 + dt.timedelta(minutes=k)) for u, items in baskets.items() for k, i in enumerate(items)]
    return pl.DataFrame(rows, schema={S.USER_ID: pl.String, S.ITEM_ID: pl.String,
                                      S.TS: pl.Datetime("us", "UTC")}, orient="row")


def _random_pairs(n_users=120, n_items=15, seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    baskets = {f"u{u}": sorted({f"i{k:02d}" for k in rng.integers(0, n_items, rng.integers(2, 7))})
               for u in range(n_users)}
    return _pairs(baskets)


def test_closed_form_equals_the_per_column_constrained_solve():
    # EASE minimises ||X - XB||^2 + lam ||B||^2 with diag(B) = 0; the problem splits by column:
    # B[-j, j] = (G[-j,-j] + lam I)^-1 G[-j, j]. An independent solve of that must match.
    pairs, lam = _random_pairs(), 7.0
    model = E.fit(pairs, FeatureParams(ease_lambda=lam))
    row = {i: r for r, i in enumerate(model.item_ids)}
    n = len(row)
    x = np.zeros((pairs.get_column(S.USER_ID).n_unique(), n))
    users = {u: k for k, u in enumerate(sorted(set(pairs.get_column(S.USER_ID))))}
    for u, i in zip(pairs.get_column(S.USER_ID), pairs.get_column(S.ITEM_ID)):
        x[users[u], row[i]] = 1.0
    g = x.T @ x
    for j in range(n):
        rest = [k for k in range(n) if k != j]
        col = np.linalg.solve(g[np.ix_(rest, rest)] + lam * np.eye(n - 1), g[rest, j])
        np.testing.assert_allclose(model.weights[rest, j], col, rtol=1e-4, atol=1e-6)
        assert model.weights[j, j] == 0.0
    assert model.info["lambda"] == lam and model.info["lambda_chosen_by"] == "features.ease_lambda"


def test_items_bought_together_are_each_others_top_neighbour():
    baskets = {f"a{k}": ["mug", "saucer", f"noise{k % 5}"] for k in range(30)}
    baskets.update({f"b{k}": ["lamp", "bulb", f"noise{k % 5}"] for k in range(30)})
    model = E.fit(_pairs(baskets), FeatureParams())
    table = E.top_neighbours(model, 2)
    first = {a: b for a, b, r in table.select(S.ITEM_A, S.ITEM_B, S.RANK).iter_rows() if r == 1}
    assert first["mug"] == "saucer" and first["saucer"] == "mug" and first["lamp"] == "bulb"
    scores = model.scores(["mug"])
    assert model.item_ids[int(np.argmax(scores))] == "saucer"
    assert scores[model.item_ids.index("bulb")] <= 0.0


def test_lambda_is_chosen_on_the_holdout_and_recorded():
    model = E.fit(_random_pairs(n_users=200), FeatureParams())
    info = model.info
    assert info["lambda_chosen_by"] == "leave-newest-out holdout"
    assert info["lambda_holdout"]["multiple"] in E.LAMBDA_GRID
    assert info["lambda"] == pytest.approx(info["lambda_holdout"]["multiple"] * info["lambda_holdout"]["mean_users_per_item"],
                                           rel=1e-3)
    tried = [float(m) for m in info["lambda_holdout"]["score_by_multiple"]]
    assert 3 <= len(tried) <= len(E.LAMBDA_GRID) and set(E.LAMBDA_GRID[1:4]) <= set(tried)
    # No shopper with 3 items: no holdout, the grid's middle multiple, and it says so.
    small = E.fit(_pairs({f"u{k}": ["a", "b"] for k in range(5)}), FeatureParams())
    assert small.info["lambda_chosen_by"].startswith("default")


def test_the_table_keeps_positive_weights_ranked_and_capped():
    model = E.fit(_random_pairs(), FeatureParams(ease_lambda=3.0))
    table = E.top_neighbours(model, 4)
    assert table.get_column(S.SCORE).min() > 0
    assert table.group_by(S.ITEM_A).agg(pl.len()).get_column("len").max() <= 4
    for _, g in table.group_by(S.ITEM_A):
        assert g.sort(S.RANK).get_column(S.SCORE).is_sorted(descending=True)
        assert g.get_column(S.RANK).to_list() == list(range(1, g.height + 1))
    assert (table.get_column(S.ITEM_A) != table.get_column(S.ITEM_B)).all()
    assert E.top_neighbours(model, 4).equals(table)  # deterministic


def test_max_items_keeps_the_most_shopped_items_and_zero_turns_it_off():
    pairs = _random_pairs(n_items=12)
    counts = pairs.group_by(S.ITEM_ID).agg(pl.len().alias("n")).sort(["n", S.ITEM_ID], descending=[True, False])
    model = E.fit(pairs, FeatureParams(ease_max_items=5, ease_lambda=1.0))
    assert model.item_ids == counts.head(5).get_column(S.ITEM_ID).to_list()
    assert E.fit(pairs, FeatureParams(ease_max_items=0)) is None
    table, info = E.ease_table(pairs, FeatureParams(ease_max_items=0))
    assert table is None and info == {"enabled": False, "fitted": False}


@pytest.mark.parametrize("kw, field", [({"ease_max_items": -1}, "features.ease_max_items"),
                                       ({"ease_top_m": 0}, "features.ease_top_m"),
                                       ({"ease_lambda": 0.0}, "features.ease_lambda")])
def test_bad_settings_are_refused_by_name(kw, field):
    with pytest.raises(ValueError, match=field):
        FeatureParams(**kw)


def test_pairs_are_distinct_positive_and_keep_the_newest_time():
    ev = pl.DataFrame({
        S.USER_ID: ["u1", "u1", "u1", "u2", None],
        S.ITEM_ID: ["a", "a", "b", "a", "a"],
        S.EVENT_TYPE: ["view", "purchase", "return", "click", "purchase"],
        S.TS: [T0, T0 + dt.timedelta(hours=1), T0, T0, T0],
    })
    pairs = E.user_item_pairs(ev).sort(S.USER_ID)
    assert pairs.select(S.USER_ID, S.ITEM_ID).rows() == [("u1", "a"), ("u2", "a")]  # returns and guests do not count
    assert pairs.get_column(S.TS)[0] == T0 + dt.timedelta(hours=1)


def _catalog_with_ease():
    cat, index = small_catalog(20)
    table = {"i001": (["i002", "i003", "nowhere"], np.array([0.5, 0.2, 0.9])),
             "i004": (["i003"], np.array([0.4]))}
    cat.ease = ItemNeighbours(table, cat.row)
    return cat, index


def test_neighbour_scores_sum_over_the_history():
    cat, _ = _catalog_with_ease()
    rows, scores = cat.ease.scores([cat.row["i001"], cat.row["i004"], cat.row["i001"]])
    got = {cat.item_ids[r]: s for r, s in zip(rows, scores)}
    assert got == pytest.approx({"i002": 0.5, "i003": 0.6})  # unknown neighbours dropped, sources distinct


def test_ranking_feature_and_candidates_come_from_the_history():
    cat, index = _catalog_with_ease()
    ctx = RankContext(mode="recommend", recent_items=[("i001", "view"), ("i009", "return")], purchased=frozenset({"i004"}))
    e = attach_ease(ctx, cat)
    assert e is not None
    rows = cat.rows(["i002", "i003", "i005"])
    x = candidate_features(ctx, rows, cat)
    col = x[:, FEATURE_NAMES.index("ease")]
    np.testing.assert_allclose(col, [0.5 / 0.6, 1.0, 0.0], rtol=1e-6)
    live = LiveCatalog(cat, index, None, RetrievalConfig(popular_candidates=0, num_candidates=1, cooc_candidates=0))
    ids = live.recommend(None, [], None, exclude=frozenset({"i003"}), ease=e)
    assert ids == ["i002"]  # the excluded neighbour never comes back
    # a search request carries no EASE feature; a guest has no scores
    assert candidate_features(RankContext(mode="search"), rows, cat)[:, FEATURE_NAMES.index("ease")].max() == 0
    assert attach_ease(RankContext(mode="recommend"), cat) is None



@pytest.mark.parametrize("peak", E.LAMBDA_GRID)
def test_the_lambda_search_finds_the_grid_s_best_with_fewer_fits(peak):
    """Each EASE fit is an N^3 inverse (minutes at 10,000 items): the search starts in the grid's
    middle and steps outward only while the best is at an edge of what it tried; where the score
    rises then falls along the grid it picks what scoring every multiple picks."""
    calls: list[float] = []

    def score(m: float) -> float:
        calls.append(m)
        return -abs(np.log(m / peak))

    best, scores = E.grid_search(E.LAMBDA_GRID, score)
    assert best == peak and set(scores) == set(calls) and len(calls) == len(set(calls))
    assert len(calls) == (3 if peak == E.LAMBDA_GRID[2] else 4) < len(E.LAMBDA_GRID)
    best, _ = E.grid_search(E.LAMBDA_GRID, lambda m: 1.0)  # a flat score: the largest, as over the whole grid
    assert best == E.LAMBDA_GRID[-1]
