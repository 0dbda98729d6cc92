"""Seed profiles (features/profiles/seed.py): the feature job's seeds are the replay of every event,
so serving starts from the profile the ranker was trained and evaluated on."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from features.data import schema as S
from features.data.pipeline import SplitConfig, build_local
from features.data.transforms import FeatureParams
from features.data.validate import ValidationConfig
from features.profiles.profile import ProfileParams
from features.profiles.replay import replay_profiles
from features.profiles.seed import PROFILE_SEED, profile_from_seed, seed_profiles, seed_states, with_seeds

P = ProfileParams()
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
N_ITEMS, D = 120, 16
ITEMS = pl.DataFrame({S.ITEM_ID: [f"i{k}" for k in range(N_ITEMS)],
                      S.CATEGORY: [f"c{k % 5}" if k % 7 else None for k in range(N_ITEMS)],
                      S.PRICE: [float(1 + k % 13) if k % 11 else None for k in range(N_ITEMS)]})
RNG = np.random.default_rng(3)
VECTORS = {f"i{k}": RNG.standard_normal(D).astype(np.float32) for k in range(N_ITEMS)}
CATS = dict(zip(ITEMS[S.ITEM_ID], zip(ITEMS[S.CATEGORY], ITEMS[S.PRICE])))


def lookup(item_id: str):
    category, price = CATS.get(item_id, (None, None))
    return VECTORS.get(item_id), category, price


def events(searches: bool = False) -> pl.DataFrame:
    """A regular buyer with 400 interactions over a year (far more than the 50 recent items), a
    light one, and a shopper whose events are all on one day; event prices on some lines."""
    rows = []
    rng = np.random.default_rng(7)
    for user, n, span_days in (("heavy", 400, 360), ("light", 6, 20), ("oneday", 30, 0.5)):
        ts = np.sort(rng.uniform(0, span_days * 86400, n))
        for k, t in enumerate(ts):
            etype = ["view", "click", "add_to_cart", "purchase", "purchase", "return"][rng.integers(6)]
            item = f"i{rng.integers(N_ITEMS)}"
            price = float(rng.uniform(1, 20)) if k % 3 == 0 else None
            rows.append((f"{user}:{k}", T0 + dt.timedelta(seconds=float(t)), user, etype, item, None, price))
            if searches and k % 10 == 0:
                rows.append((f"{user}:{k}s", T0 + dt.timedelta(seconds=float(t) - 1), user, "search", None, "red mug", None))
    return pl.DataFrame(rows, schema={S.EVENT_ID: pl.String, S.TS: pl.Datetime("us", "UTC"), S.USER_ID: pl.String,
                                      S.EVENT_TYPE: pl.String, S.ITEM_ID: pl.String, S.QUERY: pl.String,
                                      S.PRICE: pl.Float64}, orient="row")


def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.allclose(a, b, rtol=1e-9, atol=1e-12))


def _seeds(ev: pl.DataFrame, **kw) -> dict:
    st = seed_states(ev, ITEMS, P, **kw)
    return {p.user_id: p for p in (profile_from_seed(s, lookup) for s in st[PROFILE_SEED])}


def test_a_seed_is_the_replay_of_every_event():
    ev = events()
    seeds, replayed = _seeds(ev), replay_profiles(ev, lookup, P)
    assert set(seeds) == set(replayed) == {"heavy", "light", "oneday"}
    for user, r in replayed.items():
        s = seeds[user]
        assert s.purchased == r.purchased and s.recent_items == r.recent_items
        assert s.category_weights == pytest.approx(r.category_weights)
        assert s.price_stats() == pytest.approx(r.price_stats())
        assert (s.n_events, s.last_ts, s.session_start_ts, s.pref_ts) == (r.n_events, r.last_ts, r.session_start_ts, r.pref_ts)
        assert same(s.pref_sum, r.pref_sum) and s.pref_sum is not None
        assert same(s.intent_sum, r.intent_sum) and s.intent_ts == r.intent_ts
    assert any(r.intent_sum is not None for r in replayed.values())  # a session still under way is seeded too
    # the regular buyer's purchases reach far past the 50 recent items a short seed would fold
    assert len(seeds["heavy"].purchased) > 50 and len(seeds["heavy"].recent_items) == 50


def test_item_weights_are_capped_at_the_largest():
    ev = events()
    full, capped = _seeds(ev)["heavy"], _seeds(ev, max_items=40)["heavy"]
    d = json.loads(seed_states(ev.filter(pl.col(S.USER_ID) == "heavy"), ITEMS, P, max_items=40)[PROFILE_SEED][0])
    weights = [w for _, w in d["pref_sum"]]
    assert len(weights) == 40 and weights == sorted(weights, reverse=True)
    cos = float(full.preference() @ capped.preference())
    assert 0.9 < cos < 1.0  # the oldest items' small weights are what is dropped
    assert capped.purchased == full.purchased  # nothing but the vector sums is capped


def test_a_search_leaves_its_query_out_of_the_seeded_intent_only():
    ev = events(searches=True)
    seeds, replayed = _seeds(ev), replay_profiles(ev, lookup, P)  # no query vectors offline either
    for user, r in replayed.items():
        assert same(seeds[user].pref_sum, r.pref_sum)
        assert seeds[user].recent_queries == r.recent_queries and seeds[user].recent_queries


def test_serving_seeds_from_the_column_only_with_the_same_parameters():
    ev = events()
    tables = build_local(ev.to_arrow(), ITEMS.with_columns(pl.col(S.ITEM_ID).alias(S.TITLE)).to_arrow(),
                         ValidationConfig(), FeatureParams(), SplitConfig(valid_days=5, test_days=5))
    users = with_seeds(tables.users, ev, ITEMS, P, tables.as_of)  # as the feature job writes it
    assert PROFILE_SEED in users.columns
    full = {p.user_id: p for p in seed_profiles(users, lookup, P, seeded_with=P)}
    assert len(full["heavy"].purchased) > 50
    other = ProfileParams(preference_half_life_days=7)
    short = {p.user_id: p for p in seed_profiles(users, lookup, other, seeded_with=P)}
    assert [i for i, _, _ in short["heavy"].recent_items] == [i for i, _, _ in full["heavy"].recent_items]
    assert len(short["heavy"].purchased) < len(full["heavy"].purchased)  # folded from the 50 recent items
    legacy = {p.user_id: p for p in seed_profiles(users.drop(PROFILE_SEED), lookup, P, seeded_with=None)}
    assert legacy["heavy"].recent_items == short["heavy"].recent_items


def test_a_huge_history_folds_its_most_recent_items_as_dimensions(monkeypatch):
    """The cost of a seed is events x dimensions; past MAX_SEED_DIMS distinct items the oldest fold
    without a vector, and everything else is still the replay's."""
    import features.profiles.seed as seed

    ev = events()
    monkeypatch.setattr(seed, "MAX_SEED_DIMS", 40)
    capped, replayed = _seeds(ev)["heavy"], replay_profiles(ev, lookup, P)["heavy"]
    d = json.loads(seed_states(ev.filter(pl.col(S.USER_ID) == "heavy"), ITEMS, P)[PROFILE_SEED][0])
    assert len(d["pref_sum"]) <= 40
    newest = ev.filter(pl.col(S.USER_ID) == "heavy").sort(S.TS, descending=True)[S.ITEM_ID].unique(maintain_order=True)
    assert {i for i, _ in d["pref_sum"]} <= set(newest.head(40).to_list())
    assert 0.8 < float(capped.preference() @ replayed.preference()) < 1.0  # random items, revisited all year long
    assert capped.purchased == replayed.purchased and capped.price_stats() == pytest.approx(replayed.price_stats())
