"""ALS item factors: the feature job's table, the scorer serving folds a history into (checked
against the `implicit` library's own `recalculate_user`), and the ranking features it feeds."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from features.data import als as ALS
from features.data import schema as S
from features.data.als import AlsScorer
from features.data.transforms import FeatureParams
from features.evaluation.baselines import fit_als
from features.retrieval.ranking import FEATURE_NAMES, RankContext, candidate_features
from tests.helpers import small_catalog

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _pairs(n_users=150, n_items=30, seed=0, prefix="i") -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"{prefix}{k:03d}", T0) for u in range(n_users)
            for k in sorted({int(k) for k in rng.integers(0, n_items, rng.integers(2, 8))})]
    return pl.DataFrame(rows, schema={S.USER_ID: pl.String, S.ITEM_ID: pl.String, S.TS: pl.Datetime("us", "UTC")},
                        orient="row")


def test_the_scorer_folds_a_history_in_as_implicit_does():
    pairs = _pairs()
    p = FeatureParams(als_factors=8, als_regularization=3.0)
    table, info = ALS.als_table(pairs, p)
    assert info["fitted"] and info["items"] == table.height == 30 and info["factors"] == 8
    model = fit_als(pairs, 8, 3.0)  # the evaluation's baseline: implicit's recalculate_user per history
    assert np.allclose(np.stack(table.get_column(ALS.FACTORS).to_numpy()), model.model.item_factors)
    row = {i: r for r, i in enumerate(table.get_column(S.ITEM_ID).to_list())}
    scorer = AlsScorer(table, row)
    for history in (["i001"], ["i003", "i017", "i029"], ["i005", "i005", "nowhere"]):
        user = scorer.user_vector([row[i] for i in history if i in row])
        want = model.scores(history)
        got = scorer.scores(user, np.arange(len(row)))
        assert np.allclose(got, want, rtol=1e-3, atol=1e-5), history


def test_items_outside_the_fit_score_zero_and_an_unknown_history_has_no_vector():
    pairs = _pairs(n_items=10)
    table, _ = ALS.als_table(pairs, FeatureParams(als_factors=4))
    row = {f"i{k:03d}": k for k in range(12)}  # i010, i011: in the catalog, not in the fit
    scorer = AlsScorer(table, row)
    assert len(scorer) == 10
    assert scorer.user_vector([10, 11]) is None
    s = scorer.scores(scorer.user_vector([0, 1]), np.array([0, 10, 11]))
    assert s[1] == s[2] == 0.0 and s[0] != 0.0


def test_the_cap_keeps_the_items_with_most_shoppers_and_zero_factors_turn_it_off():
    pairs = _pairs(n_items=40)
    counts = pairs.group_by(S.ITEM_ID).len().sort(["len", S.ITEM_ID], descending=[True, False])
    table, info = ALS.als_table(pairs, FeatureParams(als_factors=4, als_max_items=12))
    assert sorted(table.get_column(S.ITEM_ID).to_list()) == sorted(counts.head(12).get_column(S.ITEM_ID).to_list())
    assert ALS.als_table(pairs, FeatureParams(als_factors=0)) == (None, {"enabled": False, "fitted": False})
    one = pairs.filter(pl.col(S.ITEM_ID) == "i000")
    assert ALS.als_table(one, FeatureParams())[0] is None  # fewer than 2 items: nothing to fit


@pytest.mark.parametrize("override, name", [({"als_factors": -1}, "als_factors"),
                                            ({"als_max_items": -5}, "als_max_items"),
                                            ({"als_regularization": 0.0}, "als_regularization")])
def test_bad_settings_name_the_field(override, name):
    with pytest.raises(ValueError, match=f"features.{name}"):
        FeatureParams(**override)


def test_ranking_features_for_a_shopper_with_a_history_only_when_recommending():
    cat, _ = small_catalog(30)
    table, _ = ALS.als_table(_pairs(n_items=30), FeatureParams(als_factors=6))
    cat.als = AlsScorer(table, cat.row)
    rows = np.arange(20)
    a, r = FEATURE_NAMES.index("als"), FEATURE_NAMES.index("als_rank")
    ctx = RankContext(mode="recommend", recent_items=[("i003", "purchase"), ("i007", "view")])
    x = candidate_features(ctx, rows, cat)
    user = cat.als.user_vector([cat.row["i003"], cat.row["i007"]])
    s = cat.als.scores(user, rows)
    assert np.allclose(x[:, a], s - s.max()) and x[:, a].max() == 0.0
    assert x[int(np.argmax(s)), r] == 0.0 and sorted(x[:, r] * 20) == list(range(20))
    for other in (RankContext(mode="recommend"), RankContext(mode="search", recent_items=ctx.recent_items)):
        x = candidate_features(other, rows, cat)
        assert (x[:, a] == 0).all() and (x[:, r] == 1).all()  # no history, or a search: absent


def test_its_reason_names_the_history_item_that_adds_most_and_only_for_a_shopper_the_fit_knows():
    from features.retrieval.reasons import LIKED, reasons

    cat, _ = small_catalog(30)
    table, _ = ALS.als_table(_pairs(n_items=30), FeatureParams(als_factors=6))
    cat.als = AlsScorer(table, cat.row)
    rows = np.arange(20)
    contrib = np.zeros(len(FEATURE_NAMES))
    contrib[FEATURE_NAMES.index("als")] = 1.0
    liked = LIKED[cat.main_interaction]
    one = RankContext(mode="recommend", recent_items=[("i003", "purchase")])
    x = candidate_features(one, rows, cat)
    assert reasons(one, 4, contrib, cat, x[4]) == [liked.format(title=cat.title[cat.row["i003"]])]
    # the score is a sum over the history (y_t' W y_j per item j); the reason names its largest part
    hist = [cat.row[i] for i in ("i003", "i007", "i011", "i019")]
    user = cat.als.user_vector(hist)
    named = 0
    for t in rows:
        parts = np.array([cat.als.factors[h] @ cat.als.solve @ cat.als.factors[t] for h in hist])
        assert np.isclose(parts.sum(), cat.als.scores(user, np.array([t]))[0], rtol=1e-4, atol=1e-6)
        src = cat.als.strongest(hist, int(t))
        assert src == (hist[int(np.argmax(parts))] if parts.max() > 0 else None)
        named += src is not None
    assert named > 0
    several = RankContext(mode="recommend", recent_items=[(cat.item_ids[h], "view") for h in hist])
    x = candidate_features(several, rows, cat)
    for t in rows:
        src = cat.als.strongest(hist, int(t))
        want = "popular with shoppers like you" if src is None else liked.format(title=cat.title[src])
        assert reasons(several, int(t), contrib, cat, x[t]) == ([want] if x[t, FEATURE_NAMES.index("als_rank")] < 1 else [])
    assert cat.als.strongest([cat.row["i003"]], len(cat) + 5) is None  # an item added after the fit
    guest = RankContext(mode="recommend")
    assert reasons(guest, 4, contrib, cat, candidate_features(guest, rows, cat)[4]) == []


def test_recommend_adds_the_top_als_items_it_may_show_when_asked():
    from features.retrieval.live import Filters, LiveCatalog, RetrievalConfig
    from features.retrieval.ranking import attach_als

    cat, index = small_catalog(30)
    table, _ = ALS.als_table(_pairs(n_items=25), FeatureParams(als_factors=6))  # i025..i029: outside the fit
    cat.als = AlsScorer(table, cat.row)
    ctx = RankContext(mode="recommend", recent_items=[("i003", "purchase"), ("i007", "view")])
    user = attach_als(ctx, cat)
    assert user is not None and ctx.als_user is user and attach_als(ctx, cat) is user  # once per request
    assert attach_als(RankContext(mode="search", recent_items=ctx.recent_items), cat) is None
    s = cat.als.all_scores(user, len(cat) + 2)  # rows past the fit (added later) score -inf, as unfitted ones
    assert np.isinf(s[25:]).all() and np.allclose(s[:25], cat.als.scores(user, np.arange(25)))
    order = [cat.item_ids[r] for r in np.argsort(-s[:25], kind="stable")]
    only_als = dict(cooc_candidates=0, popular_candidates=0, sequence_candidates=0, ease_candidates=0)

    def recs(k, **kw):
        live = LiveCatalog(cat, index, None, RetrievalConfig(num_candidates=1, als_candidates=k, **only_als))
        return live.recommend(None, [], None, als_user=user, **kw)

    assert recs(0) == []  # off: the source adds nothing
    assert recs(5) == order[:5]
    assert recs(5, exclude=frozenset(order[:2])) == order[2:7]  # what may not be shown is skipped, not counted
    assert recs(40) == order  # never an item outside the fit
    cheap = Filters(price_max=float(np.sort(cat.price)[12]))
    assert recs(40, filters=cheap) == [i for i in order if cat.price[cat.row[i]] <= cheap.price_max]
