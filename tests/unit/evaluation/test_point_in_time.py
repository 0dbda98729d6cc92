"""Popularity of a request's own time (features/evaluation/point_in_time.py): the clock equals the
baselines' popularity and the feature job's formula computed from scratch on the events before
each instant, in any order of instants, and the system's catalog takes it over."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from features.data import schema as S
from features.data.transforms import FeatureParams, combine_item_partials, item_partials, with_sessions
from features.evaluation import methods as EM
from features.evaluation import point_in_time as PIT
from features.evaluation.baselines import popularity_scores
from features.evaluation.splits import Requests
from features.retrieval.catalog import Catalog

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
ITEMS = [f"i{k}" for k in range(8)]


def _events(n: int = 400, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    types = ["view", "click", "add_to_cart", "purchase", "search", "return"]
    return pl.DataFrame({
        S.EVENT_ID: [f"e{k}" for k in range(n)],
        S.USER_ID: [f"u{rng.integers(20)}" for _ in range(n)],
        S.TS: [T0 + dt.timedelta(hours=float(h)) for h in rng.uniform(0, 24 * 90, n)],
        S.EVENT_TYPE: [str(rng.choice(types)) for _ in range(n)],
        S.ITEM_ID: [None if rng.random() < 0.05 else f"i{rng.integers(9)}" for _ in range(n)],  # i8: not in the catalog
        S.SESSION_ID: [None] * n, S.PRICE: [None] * n,
    }, schema_overrides={S.SESSION_ID: pl.String, S.PRICE: pl.Float64}).with_columns(pl.col(S.TS).dt.cast_time_unit("us"))


def _instants(seed: int = 1) -> list[dt.datetime]:
    rng = np.random.default_rng(seed)
    # forward, then back in time (the clock starts over), then the same instant twice
    out = sorted(T0 + dt.timedelta(hours=float(h)) for h in rng.uniform(0, 24 * 95, 6))
    return out + [out[1], out[1], T0 - dt.timedelta(days=1)]


def test_baseline_clock_equals_popularity_scores_of_the_events_before_each_instant():
    ev = _events()
    clock = PIT.PopularityClock(ev, ITEMS, None, (None, 7.0))
    for t in _instants():
        before = ev.filter(pl.col(S.TS) < t)
        count, recent = clock.at(t.timestamp())
        assert count == pytest.approx(popularity_scores(before, ITEMS))
        assert recent == pytest.approx(popularity_scores(before, ITEMS, as_of=t, half_life_days=7.0), rel=1e-9, abs=1e-12)


def test_catalog_clock_sets_the_feature_jobs_popularity_of_each_instant():
    ev = _events(seed=2)
    p = FeatureParams()
    items = pl.DataFrame({S.ITEM_ID: ITEMS, S.TITLE: ITEMS})
    cat = Catalog(ITEMS, np.eye(8, dtype=np.float32), items, {})
    apply = PIT.catalog_clock(ev, cat, p)
    for t in _instants(seed=3):
        apply(t.timestamp())
        before = ev.filter(pl.col(S.TS) < t)
        want = combine_item_partials(item_partials(with_sessions(before, p.session_gap_s), p, t)) if before.height else None
        for days, got in ((7.0, cat.popularity), (1.0, cat.popularity_short), (30.0, cat.popularity_long)):
            expected = np.zeros(len(ITEMS))
            if want is not None:
                for item, v in want.select(S.ITEM_ID, S.half_life_col(days)).iter_rows():
                    if item in cat.row:
                        expected[cat.row[item]] = v
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
        first = np.full(len(ITEMS), np.nan)  # the ranker's item_age reads the first interaction of that instant
        if want is not None:
            for item, v in want.select(S.ITEM_ID, S.FIRST_SEEN).iter_rows():
                if item in cat.row:
                    first[cat.row[item]] = v.timestamp()
        np.testing.assert_allclose(cat.first_seen, first, rtol=0, atol=1e-6)
        # the features scale by the maximum of this instant, as a features version of that time would
        if cat.popularity.max() > 0:
            assert cat.popularity_norm(np.arange(len(ITEMS))).max() == pytest.approx(1.0)


def test_the_clock_hands_out_read_only_state_and_set_popularity_checks_lengths():
    ev = _events()
    count, _ = PIT.PopularityClock(ev, ITEMS, None, (None, 7.0)).at((T0 + dt.timedelta(days=30)).timestamp())
    with pytest.raises(ValueError):
        count[0] = 1.0
    cat = Catalog(ITEMS, np.eye(8, dtype=np.float32), pl.DataFrame({S.ITEM_ID: ITEMS}), {})
    with pytest.raises(ValueError, match="weekly has shape"):
        cat.set_popularity(np.zeros(3), np.zeros(8), np.zeros(8))
    with pytest.raises(ValueError, match="half_lives_days"):
        PIT.PopularityClock(ev, ITEMS, None, (0.0,))


def test_popularity_method_ranks_each_request_by_the_popularity_of_its_time():
    # i0 sells in January, i1 in March: a January request gets i0 first, a March one i1.
    rows = [("i0", T0 + dt.timedelta(days=d)) for d in range(10)] + [("i1", T0 + dt.timedelta(days=60 + d)) for d in range(5)]
    ev = pl.DataFrame({S.ITEM_ID: [r[0] for r in rows], S.TS: [r[1] for r in rows],
                       S.EVENT_TYPE: ["purchase"] * len(rows)}).with_columns(pl.col(S.TS).dt.cast_time_unit("us"))
    times = np.array([(T0 + dt.timedelta(days=12)).timestamp(), (T0 + dt.timedelta(days=66)).timestamp()])
    _, recent = PIT.baseline_popularity(ev, ITEMS, times, 7.0)
    reqs = Requests(["u", "v"], times, [{"i0"}, {"i1"}], [frozenset(), frozenset()])
    cat = Catalog(ITEMS, np.eye(8, dtype=np.float32), pl.DataFrame({S.ITEM_ID: ITEMS}), {})
    res = EM.popularity_method("recent", recent, reqs, cat, 2)
    assert res.lists[:, 0].tolist() == [0, 1]
    fixed = EM.popularity_method("recent at the end", recent(1).copy(), reqs, cat, 2)  # one array for both
    assert fixed.lists[:, 0].tolist() == [1, 1]
