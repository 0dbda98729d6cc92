"""Transforms against brute-force Python on hand-built logs, plus the no-leakage property."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import defaultdict

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features.data import cooccurrence as CO
from features.data import schema as S
from features.data import transforms as T
from features.data.text import VERBS, popular_title_queries, title_query
from features.data.validate import ValidationConfig, validate_events, validate_items
from tests.helpers import event, events_table, items_table, ts

P = T.FeatureParams(half_lives_days=(0.5, 3.0), last_n_interactions=4, recent_queries=2, top_categories=2,
                    session_gap_s=600.0, cooc_max_items_per_session=3, cooc_top_m=3, cooc_min_count=1,
                    history_len=3, query_window_s=900.0)
ITEMS = [(f"i{k}", f"Item  {k} Mug " if k % 2 else f"LAMP {k}") for k in range(8)]
CATS = {f"i{k}": ["home > mugs", "home > lamps", "garden"][k % 3] for k in range(7)}  # i7 has none
PRICES = {f"i{k}": 1.0 + k for k in range(8)}


def random_log(seed: int, n_users: int = 6, n_events: int = 160) -> pl.DataFrame:
    rnd = random.Random(seed)
    rows = []
    for n in range(n_events):
        user = f"u{rnd.randrange(n_users)}"
        # Bursts of activity (sessions), some events sharing a ts (baskets).
        center = rnd.randrange(0, 3000, 300)
        minute = center + rnd.choice([rnd.uniform(0, 30), float(rnd.randrange(0, 30, 10))])
        etype = rnd.choice(S.EVENT_TYPES)
        item = None if etype == "search" else rnd.choice(ITEMS)[0]
        query = rnd.choice(["red mug", "Lamp  ", "garden chair"]) if etype == "search" else None
        session = rnd.choice([None, None, f"s{rnd.randrange(4)}"])
        price = rnd.choice([None, round(rnd.uniform(0.5, 9), 2)])
        rows.append(event(f"e{n:04d}", minute, user, etype, item, query, session, 1, price))
    ok, bad = validate_events(events_table(rows), pl.Series([i for i, _ in ITEMS]),
                              ValidationConfig(now="2030-01-01T00:00:00Z"))
    assert bad.is_empty()
    return ok


def catalog() -> pl.DataFrame:
    ok, _ = validate_items(items_table(ITEMS, CATS, PRICES), ValidationConfig())
    return ok


AS_OF = ts(3100)


def age_days(t: dt.datetime) -> float:
    return (AS_OF - t).total_seconds() / 86400


def brute_sessions(ev: pl.DataFrame) -> dict[str, str]:
    out, by_user = {}, defaultdict(list)
    for r in ev.iter_rows(named=True):
        by_user[r[S.USER_ID]].append(r)
    for u, rows in by_user.items():
        rows.sort(key=lambda r: (r[S.TS], r[S.EVENT_ID]))
        n, prev = 0, None
        for r in rows:
            if prev is not None and (r[S.TS] - prev).total_seconds() > P.session_gap_s:
                n += 1
            prev = r[S.TS]
            out[r[S.EVENT_ID]] = r[S.SESSION_ID] or f"{u}#{n}"
    return out


@pytest.fixture(params=[1, 2, 3])
def log(request) -> pl.DataFrame:
    return T.with_sessions(random_log(request.param), P.session_gap_s)


def test_sessions_match_brute_force(log):
    expect = brute_sessions(log)
    assert dict(zip(log.get_column(S.EVENT_ID), log.get_column(T.SESSION_KEY))) == expect


def test_user_features_match_brute_force(log):
    cat = catalog()
    got = {r[S.USER_ID]: r for r in T.user_features(log, cat, P, AS_OF).iter_rows(named=True)}
    assert set(got) == set(log.get_column(S.USER_ID))
    for u, g in got.items():
        rows = sorted((r for r in log.iter_rows(named=True) if r[S.USER_ID] == u), key=lambda r: (r[S.TS], r[S.EVENT_ID]))
        inter = [r for r in rows if r[S.ITEM_ID] is not None and r[S.EVENT_TYPE] != "search"][::-1][: P.last_n_interactions]
        assert g[S.RECENT_ITEMS] == [r[S.ITEM_ID] for r in inter]
        assert g[S.RECENT_EVENT_TYPES] == [r[S.EVENT_TYPE] for r in inter]
        assert g[S.RECENT_QUERIES] == [r[S.QUERY] for r in rows if r[S.EVENT_TYPE] == "search"][::-1][: P.recent_queries]
        for t in S.EVENT_TYPES:
            assert g[S.n_col(t)] == sum(r[S.EVENT_TYPE] == t for r in rows)
        pos = [r for r in rows if r[S.EVENT_TYPE] in S.POSITIVE_EVENT_TYPES]
        w = defaultdict(float)
        for r in pos:
            if CATS.get(r[S.ITEM_ID]):
                w[CATS[r[S.ITEM_ID]]] += P.weight(r[S.EVENT_TYPE]) * 0.5 ** (age_days(r[S.TS]) / P.affinity_half_life_days)
        total = sum(w.values())
        expect = sorted(((c, v / total) for c, v in w.items() if v > 0), key=lambda x: (-x[1], x[0]))[: P.top_categories]
        assert [(d[S.CATEGORY], pytest.approx(d[S.SCORE])) for d in g[S.CATEGORY_AFFINITY]] == expect
        lp = [math.log1p(r[S.PRICE] if r[S.PRICE] is not None else PRICES[r[S.ITEM_ID]]) for r in pos]
        if lp:
            mean = sum(lp) / len(lp)
            assert g[S.PRICE_AFFINITY_LOG_MEAN] == pytest.approx(mean)
            assert g[S.PRICE_AFFINITY_LOG_STD] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in lp) / len(lp)))
        else:
            assert g[S.PRICE_AFFINITY_LOG_MEAN] is None


def test_item_features_match_brute_force_and_partials_combine_across_user_splits(log):
    cat = catalog()
    users = sorted(set(log.get_column(S.USER_ID)))
    halves = [log.filter(pl.col(S.USER_ID).is_in(users[::2])), log.filter(pl.col(S.USER_ID).is_in(users[1::2]))]
    split = T.combine_item_partials(pl.concat([T.item_partials(h, P, AS_OF) for h in halves]))
    whole = T.combine_item_partials(T.item_partials(log, P, AS_OF))
    a, b = T.item_features(split, cat, P), T.item_features(whole, cat, P)
    assert_frame_equal(a, b, check_exact=False, rel_tol=1e-9)
    feats = {r[S.ITEM_ID]: r for r in b.iter_rows(named=True)}
    assert set(feats) == {i for i, _ in ITEMS}, "every catalog item has a row, cold ones too"
    for item, f in feats.items():
        rows = [r for r in log.iter_rows(named=True) if r[S.ITEM_ID] == item]
        for h in P.half_lives_days:
            expect = sum(P.weight(r[S.EVENT_TYPE]) * 0.5 ** (age_days(r[S.TS]) / h) for r in rows)
            assert f[S.half_life_col(h)] == pytest.approx(expect)
        assert f[S.N_USERS] == len({r[S.USER_ID] for r in rows})
        assert f[S.N_SESSIONS] == len({(r[S.USER_ID], r[T.SESSION_KEY]) for r in rows})
        prices = [r[S.PRICE] for r in rows if r[S.PRICE] is not None]
        if prices:
            mean = sum(prices) / len(prices)
            assert f[S.PRICE_MEAN] == pytest.approx(mean)
            assert f[S.PRICE_STD] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in prices) / len(prices)), abs=1e-6)
            assert (f[S.PRICE_MIN], f[S.PRICE_MAX]) == (min(prices), max(prices))
        else:
            assert f[S.PRICE_MEAN] is None
        assert f[S.FIRST_SEEN] == (min(r[S.TS] for r in rows) if rows else None)


def brute_cooc(ev: pl.DataFrame) -> dict[tuple[str, str], int]:
    sessions = defaultdict(dict)
    for r in ev.iter_rows(named=True):
        if r[S.EVENT_TYPE] in S.POSITIVE_EVENT_TYPES:
            key = (r[S.USER_ID], r[T.SESSION_KEY])
            sessions[key][r[S.ITEM_ID]] = max(sessions[key].get(r[S.ITEM_ID], r[S.TS]), r[S.TS])
    counts = defaultdict(int)
    for last in sessions.values():
        kept = sorted(last, key=lambda i: (-last[i].timestamp(), i))[: P.cooc_max_items_per_session]
        for a in kept:
            for b in kept:
                if a != b:
                    counts[(a, b)] += 1
    # Logs without baskets: a single-item session pairs with the user's previous session's newest item.
    by_user = defaultdict(list)
    for (u, key), last in sessions.items():
        newest = sorted(last, key=lambda i: (-last[i].timestamp(), i))[0]
        by_user[u].append((min(last.values()), key, newest, max(last.values()), len(last)))
    for rows in by_user.values():
        rows.sort(key=lambda r: (r[0], r[1]))
        for prev, cur in zip(rows, rows[1:]):
            if (cur[4] == 1 and cur[2] != prev[2]
                    and (cur[0] - prev[3]).total_seconds() <= P.cooc_sequence_window_s):
                counts[(cur[2], prev[2])] += 1
                counts[(prev[2], cur[2])] += 1
    return counts


def test_cooccurrence_without_sessions_pairs_consecutive_items():
    """A log of single-item sessions (no baskets, no session ids, days apart) still yields pairs:
    each item with the same user's previous one within the window, none across a longer gap."""
    day = 24 * 60.0
    rows = [event("a1", 0, "u1", "view", "i1"), event("a2", 1 * day, "u1", "purchase", "i2"),
            event("a3", 30 * day, "u1", "view", "i3"),  # 29 days later: no pair with i2
            event("b1", 0, "u2", "view", "i1"), event("b2", 2 * day, "u2", "view", "i2")]
    ok, bad = validate_events(events_table(rows), pl.Series([i for i, _ in ITEMS]),
                              ValidationConfig(now="2030-01-01T00:00:00Z"))
    assert bad.is_empty()
    ev = T.with_sessions(ok, P.session_gap_s)
    codes = CO.item_codes(catalog().get_column(S.ITEM_ID))
    ids = codes.get_column(S.ITEM_ID)
    got = {(ids[a], ids[b]): c for a, b, c in CO.cooccurrence_partials(ev, codes, P).iter_rows()}
    assert got == {("i1", "i2"): 2, ("i2", "i1"): 2}
    off = T.FeatureParams(**{**P.__dict__, "cooc_sequence_window_s": 0.0})
    assert CO.cooccurrence_partials(ev, codes, off).is_empty()
    with pytest.raises(ValueError, match="cooc_sequence_window_s"):
        T.FeatureParams(cooc_sequence_window_s=-1)


def test_cooccurrence_matches_brute_force(log):
    codes = CO.item_codes(catalog().get_column(S.ITEM_ID))
    parts = CO.cooccurrence_partials(log, codes, P)
    ids = codes.get_column(S.ITEM_ID)
    got = {(ids[a], ids[b]): c for a, b, c in parts.iter_rows()}
    expect = brute_cooc(log)
    assert got == dict(expect)
    n_sessions = defaultdict(set)
    for r in log.iter_rows(named=True):
        if r[S.ITEM_ID] is not None:
            n_sessions[r[S.ITEM_ID]].add((r[S.USER_ID], r[T.SESSION_KEY]))
    ns = pl.DataFrame({S.ITEM_ID: list(n_sessions), S.N_SESSIONS: [len(v) for v in n_sessions.values()]})
    top = CO.cooccurrence_top(parts, ns, codes, P)
    for a in {k[0] for k in expect}:
        cands = [(b, c, c / math.sqrt(len(n_sessions[a]) * len(n_sessions[b]))) for (x, b), c in expect.items() if x == a]
        cands.sort(key=lambda t: (-t[2], -t[1], t[0]))
        got_a = top.filter(pl.col(S.ITEM_A) == a).sort(S.RANK)
        assert got_a.get_column(S.ITEM_B).to_list() == [b for b, _, _ in cands[: P.cooc_top_m]]
        assert got_a.get_column(S.SCORE).to_list() == pytest.approx([s for _, _, s in cands[: P.cooc_top_m]])


def test_cooccurrence_sparse_path_equals_dense(log, monkeypatch):
    codes = CO.item_codes(catalog().get_column(S.ITEM_ID))
    dense = CO.cooccurrence_partials(log, codes, P).sort(S.ITEM_A, S.ITEM_B)
    monkeypatch.setattr(CO, "DENSE_PAIR_CELLS", 0)
    sparse = CO.cooccurrence_partials(log, codes, P).sort(S.ITEM_A, S.ITEM_B)
    assert dense.equals(sparse)


CUT = T.Cutoffs(valid_start=ts(2000), test_start=ts(2600))


def brute_examples(ev: pl.DataFrame) -> set[tuple]:
    titles = {i: " ".join(t.split()).lower() for i, t in ITEMS}
    out = {}
    by_user = defaultdict(list)
    for r in ev.iter_rows(named=True):
        by_user[r[S.USER_ID]].append(r)
    for rows in by_user.values():
        rows.sort(key=lambda r: (r[S.TS], r[S.EVENT_ID]))
        for e in rows:
            if e[S.EVENT_TYPE] not in S.POSITIVE_EVENT_TYPES:
                continue
            split = "train" if e[S.TS] < CUT.valid_start else "valid" if e[S.TS] < CUT.test_start else "test"
            before = [r for r in rows if r[S.TS] < e[S.TS]][::-1][: P.history_len]
            if before:
                text = "; ".join(
                    f"{VERBS[r[S.EVENT_TYPE]]}: " + (" ".join(r[S.QUERY].split()).lower() if r[S.EVENT_TYPE] == "search" else titles[r[S.ITEM_ID]])
                    for r in before)
                out.setdefault(("history", e[S.USER_ID], e[S.TS], e[S.ITEM_ID]), (e[S.EVENT_ID], text, split))
            searches = [r for r in rows if (r[S.EVENT_TYPE] == "search" or r[S.EVENT_TYPE] in S.POSITIVE_EVENT_TYPES)
                        and (r[S.QUERY] or "").strip() and r[T.SESSION_KEY] == e[T.SESSION_KEY]
                        and r[S.TS] <= e[S.TS] and (e[S.TS] - r[S.TS]).total_seconds() <= P.query_window_s]
            if searches:
                s = max(searches, key=lambda r: (r[S.TS], r[S.EVENT_ID]))
                out.setdefault(("query", e[S.USER_ID], e[S.TS], e[S.ITEM_ID]),
                               (e[S.EVENT_ID], " ".join(s[S.QUERY].split()).lower(), split))
    return {(k[0], k[1], v[0], v[1], k[3], v[2]) for k, v in out.items()}


def test_training_examples_match_brute_force(log):
    got = T.training_examples(log, catalog(), P, CUT)
    assert list(got.columns) == list(T.EXAMPLE_COLUMNS)
    got_set = set(got.select(S.EXAMPLE_KIND, S.USER_ID, S.EVENT_ID, S.ANCHOR_TEXT, S.TARGET_ITEM_ID, S.SPLIT).iter_rows())
    assert got_set == brute_examples(log)
    assert got.filter(pl.col(S.EXAMPLE_KIND) == "query").height > 0, "the log must exercise query examples"


def test_a_click_that_carries_its_query_is_a_query_example():
    """Logs that record each click with the search it came from (no search event) still teach the
    query tower (a view is a positive event here too); a blank query names nothing."""
    rows = [event("a", 0, "u", item="i1", etype="click", query="Red  Mug"), event("b", 60, "u", item="i2", etype="view", query="lamp"),
            event("c", 120, "v", item="i2", etype="click", query="  ")]
    ev, _ = validate_events(events_table(rows), None, ValidationConfig(now="2030-01-01"))
    ex = T.training_examples(T.with_sessions(ev, 600), catalog(), P, CUT).filter(pl.col(S.EXAMPLE_KIND) == "query")
    assert sorted(ex.select(S.TARGET_ITEM_ID, S.ANCHOR_TEXT).rows()) == [("i1", "red mug"), ("i2", "lamp")]


def test_no_leakage_examples_depend_only_on_the_past(log):
    """Each example is unchanged when every event after its target's ts is deleted."""
    full = T.training_examples(log, catalog(), P, CUT)
    assert full.height > 20
    for ex in full.sample(n=20, seed=7).iter_rows(named=True):
        past = log.filter(pl.col(S.TS) <= ex[S.TS])
        again = T.training_examples(T.with_sessions(past.drop(T.SESSION_KEY), P.session_gap_s), catalog(), P, CUT)
        match = again.filter((pl.col(S.EVENT_ID) == ex[S.EVENT_ID]) & (pl.col(S.EXAMPLE_KIND) == ex[S.EXAMPLE_KIND]))
        assert match.height == 1 and match.row(0, named=True) == ex


def test_history_excludes_events_sharing_the_targets_timestamp():
    rows = [event("a", 0, "u", item="i1"), event("b", 10, "u", item="i2"), event("c", 10, "u", item="i3")]
    ev, _ = validate_events(events_table(rows), None, ValidationConfig(now="2030-01-01"))
    ex = T.training_examples(T.with_sessions(ev, 600), catalog(), P, CUT)
    anchors = dict(zip(ex.get_column(S.TARGET_ITEM_ID), ex.get_column(S.ANCHOR_TEXT)))
    assert anchors == {"i2": "bought: item 1 mug", "i3": "bought: item 1 mug"}, "a basket is not its own history"


def test_invalid_params_are_rejected_with_the_key():
    with pytest.raises(ValueError, match="event_weights.*unknown event type.*'like'"):
        T.FeatureParams(event_weights={"like": 1.0})
    with pytest.raises(ValueError, match="history_len must be >= 1"):
        T.FeatureParams(history_len=0)


def test_sample_searches_come_from_the_titles_of_the_items_most_shoppers_chose():
    """The index job's probe queries and the demo's search are this shop's words, not the bundled
    log's ("christmas lights" means nothing to a shoe shop): the first two words of the titles of
    the items most shoppers chose, bare numbers and codes left out, each query once."""
    items = pl.DataFrame({S.ITEM_ID: ["a", "b", "c", "d", "e"],
                          S.TITLE: ["Trail Runner 2, blue", "trail runner 2 red", None, "42 Oak Desk", "Wool Socks"],
                          S.N_USERS: [50, 40, 99, 30, None]})
    assert title_query("Trail Runner 2, blue") == "trail runner"
    assert title_query("42 7") == "42 7"  # nothing but numbers: the title as it is
    assert popular_title_queries(items, 3) == ["trail runner", "oak desk", "wool socks"]
    assert popular_title_queries(items, 1) == ["trail runner"]
    assert popular_title_queries(items, 0) == []
