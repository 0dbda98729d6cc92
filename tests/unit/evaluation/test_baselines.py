"""The evaluation's simple baselines on hand-built events."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from features.data import schema as S
from features.evaluation.baselines import cooccurrence_lists, popularity_scores, top_k

T0 = dt.datetime(2024, 3, 10, tzinfo=dt.timezone.utc)
ITEMS = ["a", "b", "c", "d"]


def _events(rows: list[tuple[str, str, float]]) -> pl.DataFrame:
    """(item, event type, age in days at T0)"""
    return pl.DataFrame({
        S.ITEM_ID: [r[0] for r in rows], S.EVENT_TYPE: [r[1] for r in rows],
        S.TS: [T0 - dt.timedelta(days=r[2]) for r in rows],
    }).with_columns(pl.col(S.TS).dt.cast_time_unit("us"))


def test_global_and_recent_popularity_by_hand():
    ev = _events([("a", "purchase", 10), ("a", "view", 10), ("b", "purchase", 0), ("c", "search", 0),
                  ("c", "return", 0), ("d", "click", -1)])  # d is after as_of
    assert popularity_scores(ev, ITEMS).tolist() == [2.0, 1.0, 0.0, 1.0]
    recent = popularity_scores(ev, ITEMS, T0, half_life_days=10)
    assert recent.tolist() == pytest.approx([2 * 0.5, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="as_of"):
        popularity_scores(ev, ITEMS, None, half_life_days=10)


def test_top_k_excludes_per_request():
    s = np.array([3.0, 2.0, 1.0, 0.0])
    assert top_k(s, 2, [set(), {0}, {0, 1, 2, 3}]).tolist() == [[0, 1], [1, 2], [-1, -1]]


def test_cooccurrence_discounts_history_and_falls_back_to_popularity():
    row = {i: r for r, i in enumerate(ITEMS)}
    cooc = {"a": (["b", "c"], np.array([0.5, 0.4])), "d": (["c"], np.array([0.3]))}
    pop = np.array([0.0, 1.0, 2.0, 3.0])
    # history newest first: d then a -> c: 0.3 + 0.85 * 0.4 = 0.64, b: 0.85 * 0.5 = 0.425
    lists = cooccurrence_lists(cooc, [["d", "a"], [], ["a"]], row, pop, 3, [set(), set(), {1}])
    assert lists[0].tolist() == [2, 1, 3]  # c, b, then the most popular remaining (d)
    assert lists[1].tolist() == [3, 2, 1]  # no history: popularity
    assert lists[2].tolist() == [2, 3, 0]  # b excluded


def test_als_recommends_the_items_of_a_history_s_group_and_folds_in_any_history():
    from features.evaluation.baselines import fit_als

    rng = np.random.default_rng(0)
    rows = []
    for u in range(400):  # four groups of shoppers, each buying 6 of its own 25 items
        g = u % 4
        rows += [(f"u{u}", f"i{i:03d}") for i in rng.choice(np.arange(g * 25, g * 25 + 25), 6, replace=False)]
    pairs = pl.DataFrame(rows, schema=[S.USER_ID, S.ITEM_ID], orient="row").unique()
    model = fit_als(pairs, 16, 1.0)
    assert model.info["users"] == 400 and model.item_ids == sorted(model.item_ids) and len(model.item_ids) == 100
    for group in range(4):  # a new shopper's history, never fitted: the vector is solved at request time
        s = model.scores([f"i{group * 25 + 1:03d}", f"i{group * 25 + 2:03d}", "unknown-item"])
        top = np.argsort(-s)[:10]
        assert all(group * 25 <= int(model.item_ids[j][1:]) < group * 25 + 25 for j in top)
    assert not model.scores(["unknown-item"]).any() and model.scores([]).shape == (100,)
    assert fit_als(pairs.head(1), 16, 1.0) is None  # one item: nothing to factorise
