"""The evaluation protocol by hand: splits, in-session requests, exclusions, replay at a request,
the method/metric plumbing, and the learned ranker's building blocks (features/models/learned_ranker.py)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from features.data import schema as S
from features.evaluation import methods as EM
from features.evaluation import splits as ES
from features.models.learned_ranker import (
    LearnedRanker,
    RankerParams,
    WithFallback,
    group_sizes,
    informative_groups,
    train_booster,
)
from features.models.tree_paths import PathAttribution
from features.profiles.profile import ProfileParams
from features.profiles.replay import profiles_at, replay_profiles
from features.retrieval.ranking import HandWeights, RankContext, rank_candidates
from tests.helpers import small_catalog, synthetic_lists

UTC = dt.timezone.utc


def _t(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour, tzinfo=UTC)


def _events(rows: list[tuple]) -> pl.DataFrame:
    """rows: (event_id, user, day, hour, type, item)."""
    return pl.DataFrame(
        {S.EVENT_ID: [r[0] for r in rows], S.USER_ID: [r[1] for r in rows],
         S.TS: [_t(r[2], r[3]) for r in rows], S.EVENT_TYPE: [r[4] for r in rows], S.ITEM_ID: [r[5] for r in rows],
         S.QUERY: [None] * len(rows), S.PRICE: [None] * len(rows), S.SESSION_ID: [None] * len(rows),
         S.QUANTITY: [None] * len(rows)},
        schema={S.EVENT_ID: pl.String, S.USER_ID: pl.String, S.TS: pl.Datetime("us", "UTC"), S.EVENT_TYPE: pl.String,
                S.ITEM_ID: pl.String, S.QUERY: pl.String, S.PRICE: pl.Float64, S.SESSION_ID: pl.String,
                S.QUANTITY: pl.Int64})


EVENTS = _events([
    ("e01", "u1", 1, 0, "purchase", "a"), ("e02", "u1", 1, 0, "purchase", "b"),
    ("e03", "u1", 10, 0, "purchase", "c"),
    ("e04", "u1", 20, 0, "purchase", "a"), ("e05", "u1", 20, 0, "purchase", "d"), ("e06", "u1", 20, 0, "purchase", "e"),
    ("e07", "u1", 25, 0, "purchase", "f"),
    ("e08", "u2", 2, 0, "view", "b"), ("e09", "u2", 21, 0, "purchase", "b"),
    ("e10", "u3", 5, 0, "purchase", "c"), ("e11", "u3", 22, 0, "purchase", "c"),
])


def test_split_spec_names_the_allowed_values():
    assert ES.SplitSpec.parse("leave-last").kind == "leave-last"
    assert ES.SplitSpec.parse("time:2024-01-15").at == _t(15)
    for bad in ("random", "time:yesterday", ""):
        with pytest.raises(ValueError, match="split: .*(allowed|ISO 8601)"):
            ES.SplitSpec.parse(bad)


def test_time_split_trains_before_the_instant_and_tests_the_first_interaction_after_it():
    plan = ES.plan_split(EVENTS, ES.SplitSpec.parse("time:2024-01-15"), ranker_days=7)
    assert plan.train_events[S.TS].max() < _t(15) and plan.train_events.height == 5
    assert plan.ranker_events[S.TS].max() < _t(8)  # the ranker's stages end before its label window
    test = {u: (ts, items) for u, ts, items in plan.test_requests.select(S.USER_ID, S.TS, "items").iter_rows()}
    assert test == {"u1": (_t(20), ["a", "d", "e"]), "u2": (_t(21), ["b"]), "u3": (_t(22), ["c"])}  # not day 25
    ranker = {u: items for u, items in plan.ranker_requests.select(S.USER_ID, "items").iter_rows()}
    assert ranker == {"u1": ["c"]}  # u1's day 10 falls in [8, 15)
    wide = ES.plan_split(EVENTS, ES.SplitSpec.parse("time:2024-01-15"), ranker_days=14, ranker_per_user=2)
    assert wide.ranker_requests.select(S.USER_ID, "items").rows() == [
        ("u1", ["a", "b"]), ("u1", ["c"]), ("u2", ["b"]), ("u3", ["c"])]  # each user's first two in [1, 15)
    with pytest.raises(ValueError, match="must fall after the first"):
        ES.plan_split(EVENTS, ES.SplitSpec.parse("time:2030-01-01"))


def test_last_days_split_is_the_time_split_from_the_utc_midnight_that_many_days_back():
    """last:<N>d works on any log (the default): the last interaction is day 25 00:00, so last:10d
    is time:2024-01-15, and a day 25 12:00 interaction would move nothing (floored to midnight)."""
    plan = ES.plan_split(EVENTS, ES.SplitSpec.parse("last:10d"), ranker_days=7)
    same = ES.plan_split(EVENTS, ES.SplitSpec.parse("time:2024-01-15"), ranker_days=7)
    assert plan.spec == same.spec and plan.test_requests.equals(same.test_requests)
    later = EVENTS.with_columns(pl.when(pl.col(S.EVENT_ID) == "e07").then(pl.col(S.TS) + dt.timedelta(hours=12))
                                .otherwise(pl.col(S.TS)).alias(S.TS))
    assert ES.plan_split(later, ES.SplitSpec.parse("last:10d"), ranker_days=7).spec.at == _t(15)
    with pytest.raises(ValueError, match="not a number of days"):
        ES.SplitSpec.parse("last:ten")


def test_leave_last_split_holds_out_each_users_last_and_second_last_interaction():
    plan = ES.plan_split(EVENTS, ES.SplitSpec.parse("leave-last"))
    test = {u: items for u, items in plan.test_requests.select(S.USER_ID, "items").iter_rows()}
    assert test == {"u1": ["f"], "u2": ["b"], "u3": ["c"]}
    ranker = {u: items for u, items in plan.ranker_requests.select(S.USER_ID, "items").iter_rows()}
    assert ranker == {"u1": ["a", "d", "e"], "u2": ["b"], "u3": ["c"]}
    # no stage sees a user's test interaction or anything after it, nor the ranker's stage its request
    assert set(plan.train_events[S.EVENT_ID]) == {"e01", "e02", "e03", "e04", "e05", "e06", "e08", "e10"}
    assert set(plan.ranker_events[S.EVENT_ID]) == {"e01", "e02", "e03"}


def test_requests_exclude_earlier_purchases_and_drop_requests_left_empty():
    plan = ES.plan_split(EVENTS, ES.SplitSpec.parse("time:2024-01-15"))
    reqs = ES.build_requests(EVENTS, plan.test_requests)
    assert dict(zip(reqs.users, reqs.relevant)) == {"u1": {"d", "e"}, "u2": {"b"}}  # u2 only viewed b before
    assert reqs.dropped == 1  # u3 bought c again: nothing new to find
    assert reqs.exclude[reqs.users.index("u1")] == frozenset({"a", "b", "c"})
    loose = ES.build_requests(EVENTS, plan.test_requests, exclude_purchased=False)
    assert dict(zip(loose.users, loose.relevant)) == {"u1": {"a", "d", "e"}, "u2": {"b"}, "u3": {"c"}}


def test_in_session_requests_reveal_the_first_half_and_replay_stops_at_the_cut():
    plan = ES.plan_split(EVENTS, ES.SplitSpec.parse("time:2024-01-15"))
    sess = ES.in_session(plan.test_requests, reveal=0.5)
    assert sess.select(S.USER_ID, "items", "revealed", "cut_event_id").rows() == [("u1", ["d", "e"], ["a"], "e05")]
    reqs = ES.build_requests(EVENTS, sess)
    assert reqs.relevant == [{"d", "e"}] and reqs.revealed == [["a"]] and "a" in reqs.exclude[0]
    vec = {i: np.eye(6, dtype=np.float32)[n] for n, i in enumerate("abcdef")}
    prof = ES.attach_profiles(reqs, EVENTS, _Lookup(vec), ProfileParams())[0]
    assert [i for i, _, _ in prof.recent_items] == ["a", "c", "b", "a"]  # e04 (day 20) folded, e05/e06 not
    assert prof.alpha(float(reqs.ts[0]), ProfileParams()) == pytest.approx(0.8)  # a live session
    with pytest.raises(ValueError, match="reveal"):
        ES.in_session(plan.test_requests, reveal=1.0)


class _Lookup:
    def __init__(self, vec):
        self.vec = vec

    def lookup(self, item):
        return self.vec.get(item), None, None


def test_profiles_at_equal_a_replay_until_just_before_each_request():
    rng = np.random.default_rng(3)
    rows = []
    for n in range(200):
        rows.append((f"e{n:04d}", f"u{rng.integers(4)}", int(rng.integers(1, 28)), int(rng.integers(24)),
                     str(rng.choice(["view", "click", "add_to_cart", "purchase"])), f"i{rng.integers(12)}"))
    ev = _events(rows)
    vec = {f"i{k}": v for k, v in enumerate(rng.normal(size=(12, 8)).astype(np.float32))}
    lookup = lambda i: (vec[i] / np.linalg.norm(vec[i]), "cat", 2.0)  # noqa: E731
    p = ProfileParams()
    req = pl.DataFrame({S.USER_ID: ["u0", "u1", "u0", "u3"], S.TS: [_t(9, 5), _t(15), _t(27, 3), _t(2)]})
    got = profiles_at(ev, req, lookup, p)
    for (user, ts), prof in zip(req.iter_rows(), got):
        want = replay_profiles(ev.filter(pl.col(S.USER_ID) == user), lookup, p, until=ts.timestamp() - 1e-6).get(user)
        if want is None:
            assert prof is None
            continue
        assert prof.recent_items == want.recent_items and prof.purchased == want.purchased
        np.testing.assert_allclose(prof.pref_sum, want.pref_sum, rtol=1e-9)


def test_score_method_matches_list_metrics_and_counts_missing_targets():
    cat_ids = ["a", "b", "c", "d"]
    reqs = ES.Requests(["u1", "u2"], np.array([0.0, 0.0]), [{"b", "zz"}, {"d"}], [frozenset(), frozenset()])

    class Cat:
        item_ids = cat_ids
        row = {i: n for n, i in enumerate(cat_ids)}
        vectors = np.eye(4, dtype=np.float32)

        def __len__(self):
            return 4

    res = EM.MethodResult("m", np.array([[1, 0], [0, 2]]), np.array([1.0, 3.0]))
    out = EM.score_method(res, reqs, Cat(), (1, 2), np.full(4, 0.5), 2)
    assert out["hit_rate@1"] == pytest.approx(0.5) and out["hit_rate@2"] == pytest.approx(0.5)
    assert out["recall@2"] == pytest.approx((1 / 2 + 0) / 2)  # "zz" is outside the catalog but still relevant
    assert out["mrr"] == pytest.approx(0.5) and out["coverage@2"] == pytest.approx(3 / 4)
    assert out["latency_ms"]["p50"] == pytest.approx(2.0)


# --- the learned ranker's building blocks --------------------------------------------------------
def test_groups_must_be_consecutive_and_uninformative_lists_are_dropped():
    assert group_sizes(np.array([5, 5, 7, 9, 9, 9])).tolist() == [2, 1, 3]
    with pytest.raises(ValueError, match="consecutive"):
        group_sizes(np.array([1, 2, 1]))
    keep = informative_groups(np.array([1, 0, 0, 0, 1, 1]), np.array([1, 1, 2, 2, 3, 3]))
    assert keep.tolist() == [True, True, False, False, False, False]


def test_lambdarank_learns_the_signal_round_trips_as_text_and_falls_back_per_mode(tmp_path):
    x, y, g = synthetic_lists(120, 0)
    vx, vy, vg = synthetic_lists(30, 1)
    booster, info = train_booster(x, y, g, RankerParams(num_rounds=60, min_data_in_leaf=10), valid=(vx, vy, vg))
    assert info["valid_ndcg@10"] > 0.9
    model = LearnedRanker({"recommend": booster}, {"version": "v-test"})
    model.save(tmp_path)
    assert (tmp_path / "recommend" / "model.txt").read_text().startswith("tree")  # text, not a pickle
    loaded = LearnedRanker.load(tmp_path)
    np.testing.assert_allclose(loaded.score(vx, "recommend"), model.score(vx, "recommend"))
    # TreeSHAP contributions + the bias column add up to the score
    full = booster.predict(vx[:5].astype(np.float64), pred_contrib=True)
    np.testing.assert_allclose(full.sum(axis=1), model.score(vx[:5], "recommend"), rtol=1e-6)
    np.testing.assert_allclose(loaded.contributions(vx[:5], "recommend"), full[:, :-1])
    # decision-path contributions (opt-in) add up to the score minus the trees' root values
    paths = LearnedRanker.load(tmp_path, explanations="path")
    np.testing.assert_allclose(paths.contributions(vx[:5], "recommend").sum(axis=1) + paths.paths["recommend"].bias,
                               model.score(vx[:5], "recommend"), rtol=1e-9, atol=1e-12)
    # no search model: search falls back to the hand-set weights
    both = WithFallback(loaded, HandWeights())
    np.testing.assert_allclose(both.score(vx, "search"), HandWeights().score(vx, "search"))
    np.testing.assert_allclose(both.score(vx, "recommend"), model.score(vx, "recommend"))
    assert both.describe("search") == "hand-set weights" and both.describe("recommend").startswith("learned")


def test_a_model_trained_on_other_features_is_refused(tmp_path):
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    ds = lgb.Dataset(rng.random((40, 2)), label=rng.integers(0, 2, 40), group=[20, 20], feature_name=["a", "b"])
    b = lgb.train({"objective": "lambdarank", "verbosity": -1, "min_data_in_leaf": 1}, ds, num_boost_round=2)
    (tmp_path / "recommend").mkdir()
    b.save_model(str(tmp_path / "recommend" / "model.txt"))
    with pytest.raises(ValueError, match="retrain it with jobs.train_ranker"):
        LearnedRanker.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no ranker model"):
        LearnedRanker.load(tmp_path / "nothing")


def test_a_model_from_before_features_were_added_reads_the_ones_it_knows(tmp_path):
    import lightgbm as lgb

    from features.retrieval.ranking import FEATURE_NAMES

    old = list(FEATURE_NAMES[:-2])  # e.g. trained before dense_rank and lexical_rank existed
    x, y, g = synthetic_lists(60, 3)
    ds = lgb.Dataset(x[:, :-2].astype(np.float64), label=y, group=group_sizes(g), feature_name=old)
    b = lgb.train({"objective": "lambdarank", "verbosity": -1, "min_data_in_leaf": 5}, ds, num_boost_round=10)
    (tmp_path / "recommend").mkdir()
    b.save_model(str(tmp_path / "recommend" / "model.txt"))
    loaded = LearnedRanker.load(tmp_path)
    np.testing.assert_allclose(loaded.score(x, "recommend"), b.predict(x[:, :-2].astype(np.float64)))
    c = loaded.contributions(x[:4], "recommend")
    assert c.shape == (4, len(FEATURE_NAMES)) and (c[:, -2:] == 0).all()
    np.testing.assert_allclose(c[:, :-2], b.predict(x[:4, :-2].astype(np.float64), pred_contrib=True)[:, :-1])
    p = LearnedRanker.load(tmp_path, explanations="path").contributions(x[:4], "recommend")  # the same columns
    assert p.shape == (4, len(FEATURE_NAMES)) and (p[:, -2:] == 0).all()
    np.testing.assert_allclose(p.sum(axis=1), b.predict(x[:4, :-2].astype(np.float64), raw_score=True)
                               - PathAttribution(b).bias, atol=1e-9)


def test_rank_candidates_orders_by_the_learned_scores():
    cat, _ = small_catalog()
    x, y, g = synthetic_lists(100, 2)
    booster, _ = train_booster(x, y, g, RankerParams(num_rounds=30, min_data_in_leaf=10))
    scorer = WithFallback(LearnedRanker({"recommend": booster}, {}), HandWeights())
    ctx = RankContext(mode="recommend")
    ids = cat.item_ids[:15]
    ranked = rank_candidates(ctx, ids, cat, scorer, k=5)
    from features.retrieval.ranking import candidate_features

    s = booster.predict(candidate_features(ctx, cat.rows(ids), cat).astype(np.float64))
    assert [r.item_id for r in ranked] == [ids[j] for j in np.argsort(-s, kind="stable")[:5]]
    assert [r.score for r in ranked] == pytest.approx(sorted(s, reverse=True)[:5])

    class Unexplained(WithFallback):  # the evaluation's orders need no contributions: none are computed
        def contributions(self, x, mode):
            raise AssertionError("contributions computed without explain")

    quiet = rank_candidates(ctx, ids, cat, Unexplained(LearnedRanker({"recommend": booster}, {}), HandWeights()), k=5,
                            explain=False)
    assert [(r.item_id, r.score, r.row) for r in quiet] == [(r.item_id, r.score, r.row) for r in ranked]
    assert all(r.reasons == [] for r in quiet)


def test_search_rows_carry_intervals_and_the_verdict_is_paired_by_query():
    from features.evaluation import search as SE

    rng = np.random.default_rng(0)
    base = rng.random(200)
    per = {"a": {"ndcg@10": base}, "b": {"ndcg@10": base + 0.05}, "hand": {"ndcg@10": base + 0.01},
           "sys": {"ndcg@10": np.where(np.arange(200) == 3, np.nan, base + 0.02 + 0.001 * rng.normal(size=200))}}
    rows = [SE.summarize(m, v) for m, v in per.items()]
    for r in rows:
        lo, hi = r["ci95"]["ndcg@10"]
        assert lo < r["ndcg@10"] < hi
    v = SE.verdict(rows, per, "sys", "hand", ["a", "b"], "ndcg@10")
    assert v["strongest_baseline"] == "b" and v["queries"] == 199  # the NaN query is left out of the pair
    assert v["paired_difference"] == pytest.approx(-0.03, abs=0.001) and v["paired_difference_ci95"][1] < 0
    assert not v["full_beats_strongest_baseline"] and v["learned_beats_hand"]
    assert SE.verdict(rows, per, "sys", "hand", ["a"], "ndcg@10")["full_beats_strongest_baseline"]


def test_the_query_adapter_is_kept_only_where_its_out_of_fold_ndcg_beats_zero_shot():
    from features.evaluation import search as SE
    from features.models.query_adapter import AdapterParams

    rng = np.random.default_rng(5)
    d, n_items, n_q = 32, 300, 120
    items = rng.normal(size=(n_items, d))
    items = (items / np.linalg.norm(items, axis=1, keepdims=True)).astype(np.float32)
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    target = rng.integers(0, n_items, n_q)
    q = items[target] @ (0.3 * np.eye(d) + 0.7 * rot).T
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    # every query judges its target relevant (grade 3) and one other item irrelevant (grade 1);
    # the last query judges only irrelevant items, so it teaches and judges nothing
    j = EM.Judgments([f"q{i}" for i in range(n_q)], [[int(t), int((t + 1) % n_items)] for t in target],
                     [np.array([3.0, 1.0]) for _ in range(n_q)])
    j.grades[-1] = np.array([1.0, 1.0])
    p = AdapterParams(rank=16, max_epochs=30, patience=4)
    adapter, rep, fit_vecs = SE.fit_query_adapter(j, q, items, list(range(n_q)), p, folds=3)
    cv = rep["cross_validated_vs_zero_shot"]
    assert adapter is not None and rep["used"] and cv["beats"] and cv["queries"] == n_q - 1
    assert rep["best_epoch"] >= 1 and rep["best"] > rep["zero_shot"]
    # what the fusion is fitted on next: each query's out-of-fold vector, not the final adapter's own
    assert sorted(fit_vecs) == list(range(n_q - 1))
    assert all(not np.allclose(fit_vecs[i], adapter.apply(q[i])) for i in range(5))
    # queries whose vectors are already their targets: the adapter cannot beat zero-shot, so none is
    # kept, and the fusion is fitted on the zero-shot vectors of every query
    adapter, rep, fit_vecs = SE.fit_query_adapter(j, items[target], items, list(range(n_q)), p, folds=3)
    assert adapter is None and not rep["used"] and not rep["cross_validated_vs_zero_shot"]["beats"]
    assert sorted(fit_vecs) == list(range(n_q)) and np.array_equal(fit_vecs[7], items[target[7]])
    # one query with a relevant item cannot be cross-validated: nothing is fitted, and the report says why
    adapter, rep, _ = SE.fit_query_adapter(j, q, items, [0, n_q - 1], p)
    assert adapter is None and rep == {"used": False, "why_not": "1 fitting query with a relevant item: too few to "
                                                                  "cross-validate an adapter"}


def test_the_fitted_fusion_is_kept_only_where_it_beats_the_configured_one_out_of_fold():
    from features.evaluation import search as SE
    from features.retrieval.fusion import FusionParams, Pool

    def pool(cos, bm25, gains):
        n = len(cos)
        return Pool(np.array(cos, float), np.array(bm25, float), np.ones(n, bool), np.array(bm25) > 0,
                    np.array(gains, float), np.array([g for g in gains if g > 0], float))

    default = FusionParams()
    # the relevant item is dense's best and lexical's worst; RRF ties it with a lexical distractor
    # listed first, and a fusion that trusts the dense scores more ranks it first
    dense_wins = [pool([0.9, 0.5, 0.4], [1.0, 9.0, 5.0], [3.0, 0.0, 0.0])] * 30
    chosen, rep = SE.choose_fusion(dense_wins, default)
    assert rep["kept"] and rep["cross_validated_vs_configured"]["beats"] and chosen != default
    assert chosen.describe() == rep["fitted"] and rep["fitted"].startswith("weighted")
    # the relevant item first in both lists: nothing beats the configured fusion, so it stays
    agree = [pool([0.9, 0.5, 0.4], [9.0, 5.0, 1.0], [3.0, 0.0, 0.0])] * 30
    chosen, rep = SE.choose_fusion(agree, default)
    assert chosen == default and not rep["kept"] and rep["cross_validated_vs_configured"]["paired_difference"] == 0
    chosen, rep = SE.choose_fusion(agree[:1], default)
    assert chosen == default and not rep["kept"] and "too few to cross-validate" in rep["why_not"]


def test_judged_features_of_many_queries_at_once_are_each_querys_own():
    """The evaluation computes the catalog-wide cosines of many queries in one product: every
    feature, the dense rank over the whole catalog included, is what one query alone gets."""
    from features.retrieval.live import LiveCatalog, RetrievalConfig

    cat, index = small_catalog(60)
    live = LiveCatalog(cat, index, None, RetrievalConfig(lexical=True))
    rng = np.random.default_rng(3)
    qs = [f"{c} {k}" for c, k in zip(["red mug", "blue lamp", "green box", "bag"] * 3, range(12))]
    j = EM.Judgments(qs, [rng.choice(60, 5, replace=False).tolist() for _ in qs], [np.full(5, 2.0) for _ in qs])
    v = rng.normal(size=(len(qs), cat.vectors.shape[1])).astype(np.float32)
    v[4] = cat.vectors[j.items[4][0]]  # a judged item at the top of the dense list
    many = EM.judged_features_many(j, list(range(len(qs))), v, cat, live.bm25, chunk=5)
    assert len(many) == len(qs)
    for q in range(len(qs)):
        np.testing.assert_allclose(many[q], EM.judged_features(j, q, v[q], cat, live.bm25), rtol=1e-5, atol=1e-6)


def test_the_title_weight_is_kept_only_where_it_wins_out_of_fold():
    from features.evaluation import search as SE
    from features.retrieval.fusion import FusionParams
    from features.retrieval.live import LiveCatalog, RetrievalConfig

    cat, index = small_catalog(60)
    live = LiveCatalog(cat, index, None, RetrievalConfig(lexical=True, num_candidates=60))
    red_mugs = [k for k in range(60) if k % 3 == 0 and k % 4 == 0]  # titled "red mug <k>"
    lamps = [k for k in range(60) if k % 3 == 1 and k % 4 == 2]  # titled "blue lamp <k>"
    rng = np.random.default_rng(0)
    n = 30
    aim = [int(rng.choice(lamps)) for _ in range(n)]
    vecs = {q: cat.vectors[a] + 0.05 * rng.normal(size=cat.vectors.shape[1]).astype(np.float32) for q, a in enumerate(aim)}
    hand = HandWeights()

    def judged(relevant_mugs: bool) -> EM.Judgments:
        # every query reads "red mug" while its vector points at a blue lamp
        items = [red_mugs + [a] for a in aim]
        grades = [np.array([4.0 if relevant_mugs else 1.0] * len(red_mugs) + [1.0 if relevant_mugs else 4.0]) for _ in aim]
        return EM.Judgments([f"red mug {q}" for q in range(n)], items, grades)

    # the shop's judges want what the words say: weighing title coverage wins out of fold, and is kept
    chosen, rep = SE.choose_search_weights(live, judged(True), vecs, hand, FusionParams(), folds=3)
    assert rep["kept"] and rep["cross_validated_vs_configured"]["beats"] and rep["fitted"]["title_match"] > 0
    assert chosen.search == {**hand.search, **rep["fitted"]} and chosen.recommend == hand.recommend
    # ... they want what the vector says: any title weight only pulls the mugs up, so nothing changes
    chosen, rep = SE.choose_search_weights(live, judged(False), vecs, hand, FusionParams(), folds=3)
    assert chosen is hand and not rep["kept"] and rep["fitted"] == {}


def test_the_head_weight_is_fitted_where_the_judges_want_the_thing_named():
    """Queries name a lamp ("red lamp") while their vectors and most of their words point at red
    mugs: only the head weight (the title names a lamp) brings the judged lamps up."""
    from features.evaluation import search as SE
    from features.retrieval.catalog import ItemUpdate
    from features.retrieval.fusion import FusionParams
    from features.retrieval.live import LiveCatalog, RetrievalConfig

    cat, index = small_catalog(60)
    live = LiveCatalog(cat, index, None, RetrievalConfig(lexical=True, num_candidates=60))
    red_lamps = [k for k in range(60) if k % 3 == 0 and k % 4 == 2]  # "red lamp <k>" names <k>: retitle them
    red_mugs = [k for k in range(60) if k % 3 == 0 and k % 4 == 0]
    for k in red_lamps:
        live.upsert(ItemUpdate(cat.item_ids[k], f"red {k} lamp"), cat.vectors[k])
    for k in red_mugs:
        live.upsert(ItemUpdate(cat.item_ids[k], f"red lamp {k} mug"), cat.vectors[k])
    rng = np.random.default_rng(0)
    n = 30
    aim = [int(rng.choice(red_mugs)) for _ in range(n)]
    vecs = {q: cat.vectors[a] + 0.05 * rng.normal(size=cat.vectors.shape[1]).astype(np.float32) for q, a in enumerate(aim)}
    judged = EM.Judgments(["red lamp"] * n, [red_lamps + red_mugs] * n,
                          [np.array([4.0] * len(red_lamps) + [1.0] * len(red_mugs)) for _ in range(n)])
    hand = HandWeights()
    chosen, rep = SE.choose_search_weights(live, judged, vecs, hand, FusionParams(), folds=3)
    assert rep["kept"] and rep["fitted"].get("head_match", 0) > 0 and chosen.search == {**hand.search, **rep["fitted"]}
    assert SE.describe_weights(rep["fitted"]).startswith(("title weight", "head weight"))
    assert SE.describe_weights({}) == "match weights as configured"


def test_the_learned_rankers_verdict_holds_out_every_training_query_once():
    from jobs.evaluate import inner_folds

    qs = list(range(3, 40, 2))
    sets = inner_folds(qs, 5, seed=1)
    assert len(sets) == 5 and sorted(q for s in sets for q in s) == qs and min(map(len, sets)) >= 3
    assert inner_folds(qs, 5, seed=1) == sets and inner_folds(qs, 5, seed=2) != sets
    assert len(inner_folds([7, 9], 5, 0)) == 2 and inner_folds([7], 5, 0) == []


def test_search_dev_sample_keeps_whole_queries_and_says_so():
    """`search.max_queries` (and `dev: true`) evaluate a seeded sample of the judged queries, each
    with all its judgments, and label the run; 0 or more than there are keeps everything."""
    from jobs.evaluate import sample_queries

    judg = pl.DataFrame({"query": [f"q{i % 7}" for i in range(40)], "item_id": [f"i{i}" for i in range(40)],
                         "grade": [1.0 + (i % 3) for i in range(40)]})
    sample, label = sample_queries(judg, 3, seed=0)
    kept = set(sample["query"].to_list())
    assert len(kept) == 3 and sample.height == judg.filter(pl.col("query").is_in(list(kept))).height
    assert label is not None and "DEVELOPMENT RUN" in label and "3 of 7" in label
    assert sample_queries(judg, 3, seed=0)[0].equals(sample)  # seeded
    for n in (0, 7, 100):
        whole, label = sample_queries(judg, n, seed=0)
        assert whole.equals(judg) and label is None


def test_search_judgments_come_from_the_file_else_from_the_logs_searches(tmp_path):
    """jobs.evaluate's search part: a judgments file when given; else the log's searches followed by
    a click, cart or purchase, when enough queries have one; else it says why search is skipped."""
    from dataclasses import replace

    from jobs.evaluate import EvaluateConfig, SearchEval, search_judgments

    items = pl.DataFrame({S.ITEM_ID: [f"i{n}" for n in range(12)], S.TITLE: [f"item {n}" for n in range(12)]})
    items.write_parquet(tmp_path / "items.parquet")
    rows, n = [], 0
    for q in range(12):  # shopper u<q> searches "query <q>", then clicks, carts or buys item i<q>
        for etype, minute in (("search", 0), (("click", "add_to_cart", "purchase")[q % 3], 5)):
            rows.append({S.EVENT_ID: f"e{n}", S.TS: dt.datetime(2024, 1, 1, 12, minute, tzinfo=UTC), S.USER_ID: f"u{q}",
                         S.EVENT_TYPE: etype, S.ITEM_ID: None if etype == "search" else f"i{q}",
                         S.QUERY: f"Query {q}" if etype == "search" else None})
            n += 1
    pl.DataFrame(rows).write_parquet(tmp_path / "events.parquet")
    cfg = EvaluateConfig(events=str(tmp_path / "events.parquet"), items=str(tmp_path / "items.parquet"),
                         search=SearchEval(folds=2, min_log_queries=12))
    judg, source = search_judgments(cfg)
    assert judg.columns == ["query", S.ITEM_ID, "grade"] and judg.height == 12
    assert dict(zip(judg["query"], judg["grade"]))["query 2"] == 4.0 and "12 queries" in source
    judg, why = search_judgments(replace(cfg, search=SearchEval(folds=2, min_log_queries=13)))
    assert judg is None and "the log has 12 searches followed by a click" in why and "min_log_queries=13" in why
    judg, why = search_judgments(replace(cfg, search=SearchEval(from_log=False)))
    assert judg is None and "search.from_log is false" in why
    pl.DataFrame({"query": ["mug"], S.ITEM_ID: ["i1"], "grade": [3.5]}).write_csv(tmp_path / "j.csv")
    judg, source = search_judgments(replace(cfg, judgments=str(tmp_path / "j.csv")))
    assert judg["grade"].to_list() == [3.5] and source.startswith("the judgments file")


def test_reranking_judged_items_of_one_grade_is_flagged_as_uninformative():
    from jobs.evaluate import uninformative_rerank

    assert "every method scores 1" in uninformative_rerank([np.array([2.0, 2.0]), np.array([2.0])])
    assert uninformative_rerank([np.array([2.0, 2.0]), np.array([2.0, 4.0])]) is None


def test_judgments_of_items_the_catalog_lacks_are_left_out_and_none_known_is_an_error():
    from jobs.evaluate import judged_catalog_items

    items = pl.DataFrame({S.ITEM_ID: ["a", "b"]})
    judg = pl.DataFrame({"query": ["q", "q", "r"], S.ITEM_ID: ["a", "gone", "b"], "grade": [4.0, 3.0, 2.0]})
    kept, note = judged_catalog_items(judg, items)
    assert kept[S.ITEM_ID].to_list() == ["a", "b"] and note.startswith("1 of 3 judgment rows name items the catalog lacks")
    assert judged_catalog_items(kept, items) == (kept, None)
    with pytest.raises(ValueError, match=r"none of the 3 rows names an item of the catalog \(e\.g\. judged item_id 'x'"):
        judged_catalog_items(judg.with_columns(pl.lit("x").alias(S.ITEM_ID)), items)


def test_the_ranker_verdict_needs_enough_valid_lists():
    """A bootstrap interval over a handful of lists is no 95% interval: below min_valid_lists a
    segment keeps the hand weights, however clear the difference looks."""
    from jobs.train_ranker import segment_verdict

    learned, hand = np.full(4, 0.5), np.zeros(4)
    few = segment_verdict(learned, hand, seed=0, min_lists=30)
    assert few["paired_difference_ci95"][0] > 0 and not few["beats"] and few["too_few_lists"]
    many = segment_verdict(np.full(40, 0.5), np.zeros(40), seed=0, min_lists=30)
    assert many["beats"] and not many["too_few_lists"]
    assert not segment_verdict(np.zeros(0), np.zeros(0), seed=0, min_lists=30)["beats"]


def test_a_segment_without_valid_lists_is_said_to_have_none_not_given_zero_figures():
    """A log without guests has no guest lists: "0 valid lists, learned 0.0000 vs hand 0.0000,
    [95% CI +0.0000, +0.0000]" reads like a measured tie."""
    from jobs.train_ranker import TrainRankerConfig, segment_line, segment_verdict

    cfg = TrainRankerConfig(min_valid_lists=30)
    none = segment_line("without_history", segment_verdict(np.zeros(0), np.zeros(0), 0, 30), False, cfg)
    assert none == ("  shoppers without history: no valid lists: serving uses the hand-set weights "
                    "(learned_for_guests=false)")
    some = segment_line("with_history", segment_verdict(np.full(40, 0.5), np.zeros(40), 0, 30), True, cfg)
    assert some.startswith("  shoppers with history: 40 valid lists, learned 0.5000 vs hand 0.0000, paired [95% CI ")
    assert some.endswith(": serving uses the learned model")
    few = segment_line("with_history", segment_verdict(np.full(4, 0.5), np.zeros(4), 0, 30), False, cfg)
    assert few.endswith("(too few valid lists to judge: fewer than min_valid_lists=30)")


def test_the_default_last_days_split_fits_a_short_log_and_says_so():
    """A 24-day log cannot test on its last 30 days: the plan tests on its last quarter and shrinks
    the ranker's window to fit, with notes saying so, instead of refusing the default config."""
    plan = ES.plan_split(EVENTS, ES.SplitSpec.parse("last:30d"), ranker_days=30)
    assert plan.spec.kind == "time" and plan.spec.at == _t(19)  # day 25 - 6 days, floored to midnight
    assert {u for u, in plan.test_requests.select(S.USER_ID).iter_rows()} == {"u1", "u2", "u3"}
    assert plan.ranker_until == _t(10)  # half of the 18 training days
    assert plan.notes[0].startswith("split: last:30d would leave less than half of this 24.0-day log")
    assert plan.notes[1].startswith("ranker_days: 30 reaches back before this log's first interaction")
    assert ES.plan_split(EVENTS, ES.SplitSpec.parse("last:10d"), ranker_days=7).notes == ()
    with pytest.raises(ValueError, match="must fall after the first"):  # an explicit instant is never moved
        ES.plan_split(EVENTS, ES.SplitSpec.parse("time:2023-12-01"))


def test_a_long_request_loop_says_how_far_it_is_and_a_short_one_says_nothing(capsys, monkeypatch):
    """Tens of thousands of shoppers keep the evaluation's request loops busy for many minutes."""
    clock = iter(range(0, 1000, 10))  # every call to the clock: 10 s later
    monkeypatch.setattr(EM.time, "perf_counter", lambda: float(next(clock)))
    res = EM.timed_method("system", 5, 2, lambda q: [q])
    assert res.lists[:, 0].tolist() == [0, 1, 2, 3, 4]
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("  system: ") and " of 5 requests, " in line and "min left" in line
                         for line in lines)
    EM.Progress("quick", 3).step(1)  # under 30 s: nothing
    assert capsys.readouterr().out == ""


def test_a_model_its_time_cap_stopped_is_named_in_the_report(capsys):
    """On 40,000 items SASRec ran into its 600 s cap after 9 epochs while still improving: a
    baseline short of convergence, which the report must say, with the setting that lifts it."""
    from jobs.evaluate import note_time_cap

    notes: dict = {}
    note_time_cap(notes, "SASRec", {"stopped_by": "patience", "epochs": 12, "best_epoch": 9}, 600, "sasrec.max_time_s")
    assert notes == {} and capsys.readouterr().out == ""
    note_time_cap(notes, "SASRec", {"stopped_by": "max_time_s", "epochs": 9, "best_epoch": 8}, 600, "sasrec.max_time_s")
    assert notes["SASRec training"] == ("stopped by its 600 s cap after 9 epochs (best 8), not by patience: it may be "
                                        "short of convergence, and a rerun may stop at another point; raise "
                                        "sasrec.max_time_s")
    assert "NOTE SASRec: stopped by its 600 s cap" in capsys.readouterr().out
    # The encoder fine-tune counts steps: the published time-split run's stopped at 160 of 300.
    note_time_cap(notes, "encoder fine-tune", {"stopped_by": "patience", "steps": 120, "max_steps": 300}, 240,
                  "encoder.max_time_s")
    assert "encoder fine-tune training" not in notes
    note_time_cap(notes, "encoder fine-tune", {"stopped_by": "max_time_s", "steps": 160, "max_steps": 300,
                                               "best_step": 160}, 240, "encoder.max_time_s")
    assert notes["encoder fine-tune training"].startswith("stopped by its 240 s cap after 160 of 300 steps (best 160), "
                                                          "not by patience")


def test_ease_and_als_without_a_row_are_named_with_the_reason_in_the_notes():
    """A log whose training events name one item: EASE and ALS cannot be fitted, and the report
    says so instead of leaving their rows out without a word."""
    from features.data import ease as E
    from features.data.transforms import FeatureParams
    from features.evaluation import baselines as B
    from jobs.evaluate import missing_baselines

    def pairs(rows: list[tuple[str, str]]) -> pl.DataFrame:
        return E.user_item_pairs(pl.DataFrame({
            S.USER_ID: [u for u, _ in rows], S.ITEM_ID: [i for _, i in rows], S.EVENT_TYPE: ["purchase"] * len(rows),
            S.TS: [dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)] * len(rows)}))

    one_item = pairs([("u1", "a"), ("u2", "a")])
    ease_model, als = E.fit(one_item, FeatureParams()), B.fit_als(one_item, 64, 10.0)
    assert ease_model is None and als is None
    notes = missing_baselines(ease_model, als, [64, 10.0])
    assert notes == {"EASE": "not run: fewer than 2 items with a positive event in the training events",
                     "ALS": "not run: fewer than 2 items with a positive event in the training events"}
    assert missing_baselines(ease_model, None, None)["ALS"].endswith("in the validation period, where its settings "
                                                                     "are chosen")
    two_items = pairs([("u1", "a"), ("u1", "b"), ("u2", "a")])
    assert missing_baselines(E.fit(two_items, FeatureParams()), B.fit_als(two_items, 8, 1.0), [8, 1.0]) == {}


def test_the_systems_share_each_requests_candidates_and_rank_as_each_would_alone():
    """The hand-set and learned systems rank the same candidates: one candidate pass per request
    serves both, and each list is what its scorer gives on its own (the context's per-request
    caches change nothing), with the shared time in each method's latency."""
    from features.retrieval.live import LiveCatalog, RetrievalConfig

    cat, index = small_catalog(40)
    rng = np.random.default_rng(5)
    rows = [(f"e{n:03d}", f"u{rng.integers(6)}", int(rng.integers(1, 20)), int(rng.integers(24)),
             str(rng.choice(["view", "add_to_cart", "purchase"])), cat.item_ids[rng.integers(40)]) for n in range(120)]
    lookup = lambda i: (cat.vectors[cat.row[i]], "Toys", 3.0)  # noqa: E731
    users = [f"u{k}" for k in range(6)] + ["guest"]
    profiles = replay_profiles(_events(rows), lookup, ProfileParams())
    reqs = ES.Requests(users, np.full(7, _t(25).timestamp()), [set()] * 7, [frozenset({cat.item_ids[3]})] * 7,
                       profiles=[profiles.get(u) for u in users])
    live = LiveCatalog(cat, index, None, RetrievalConfig(lexical=False, num_candidates=10, popular_candidates=5))
    x, y, g = synthetic_lists(100, 2)
    learned = WithFallback(LearnedRanker({"recommend": train_booster(x, y, g, RankerParams(num_rounds=20,
                                                                                           min_data_in_leaf=10))[0]}, {}),
                           HandWeights())
    both = EM.system_methods([("hand", HandWeights()), ("learned", learned)], reqs, live, ProfileParams(), 8)
    alone = [EM.system_methods([(n, s)], reqs, live, ProfileParams(), 8)[0] for n, s in
             (("hand", HandWeights()), ("learned", learned))]
    assert [r.name for r in both] == ["hand", "learned"]
    for a, b in zip(both, alone):
        assert a.lists.tolist() == b.lists.tolist() and (a.latency_ms > 0).all()
    assert both[0].lists.tolist() != both[1].lists.tolist()  # two scorers, two orders
    assert (both[0].lists != 3).all()  # the excluded row is never ranked


def test_recommends_popular_candidates_break_ties_by_row():
    """The popular candidates are the most popular items, ties to the lower row, without sorting
    the whole catalog per request (a partition: 40,000 items cost 2.7 ms a request sorted)."""
    from features.retrieval.live import LiveCatalog, RetrievalConfig

    cat, index = small_catalog(30)
    cat.popularity[:] = 1.0
    cat.popularity[[7, 20]] = 3.0
    live = LiveCatalog(cat, index, None, RetrievalConfig(lexical=False, popular_candidates=6, cooc_candidates=0))
    ids = live.recommend(None, [], None, None, frozenset({cat.item_ids[0], cat.item_ids[20]}))
    assert ids == [cat.item_ids[r] for r in (7, 1, 2, 3, 4, 5)]
