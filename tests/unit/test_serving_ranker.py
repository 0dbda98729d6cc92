"""The serving ranker (inside the Retriever replica) loads the learned ranker version (ranker.model), falls back to the hand-set
weights without one, and refuses a folder that is not a ranker version (no Serve needed: the
deployment's class is instantiated directly over real artifact folders)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from features import artifacts as A
from features.models.learned_ranker import (
    SEGMENTS,
    LearnedRanker,
    RankerParams,
    WithFallback,
    served_segments,
    train_booster,
)
from features.retrieval.ranking import HandWeights, RankContext, candidate_features
from serving.ranker import Ranker
from serving.retriever import open_live_catalog
from serving.settings import RankerServing, ServingConfig, resolve
from tests.helpers import small_catalog, synthetic_lists


@pytest.fixture()
def root(tmp_path):
    cat, index = small_catalog()
    features_dir = tmp_path / "features" / "v1"
    (features_dir / "items").mkdir(parents=True)

    from features.data import schema as S

    pl.DataFrame({S.ITEM_ID: cat.item_ids, S.TITLE: cat.title, S.ITEM_TEXT: cat.text, S.CATEGORY: cat.category,
                  S.PRICE: cat.price, S.half_life_col(7): cat.popularity}).write_parquet(features_dir / "items" / "items.parquet")
    A.write_manifest(str(features_dir), A.manifest("features", "v1", {}, {}, {}, {}))
    index_dir = tmp_path / "index" / "v1"
    index.save(index_dir)
    A.write_manifest(str(index_dir), A.manifest("index", "v1", {}, {"features": {"path": str(features_dir)}}, {}, {}))
    return tmp_path


def _ranker_version(root, name: str = "20260101T000000Z-test", metrics: dict | None = None):
    x, y, g = synthetic_lists(80, 0)
    booster, _ = train_booster(x, y, g, RankerParams(num_rounds=20, min_data_in_leaf=10))
    out = root / "ranker" / name
    LearnedRanker({"recommend": booster}, {}).save(out)
    A.write_manifest(str(out), A.manifest("ranker", name, {}, {}, {"modes": ["recommend"]}, metrics or {}))
    return out, booster


def _cfg(root, model: str = "latest") -> ServingConfig:
    return ServingConfig(artifacts_root=str(root), state_dir=str(root / "state"), ranker=RankerServing(model=model))


def test_without_a_version_the_hand_weights_rank(root):
    res = resolve(_cfg(root))
    assert res.ranker_dir is None and res.versions["ranker"] == "hand-set weights"
    r = Ranker(_cfg(root), res, open_live_catalog(_cfg(root), res, lexical=False))
    assert r.info() == {"search": "hand-set weights", "recommend": "hand-set weights"}
    out = r.rank(RankContext(mode="recommend"), ["i001", "i002", "i003"], k=2)
    assert len(out) == 2 and out[0]["score"] >= out[1]["score"]


def test_the_latest_version_ranks_recommend_and_search_falls_back(root):
    out_dir, booster = _ranker_version(root)
    res = resolve(_cfg(root))
    assert res.ranker_dir == str(out_dir.resolve()) and res.versions["ranker"] == out_dir.name
    r = Ranker(_cfg(root), res, open_live_catalog(_cfg(root), res, lexical=False))
    assert r.info()["recommend"].startswith("learned") and r.info()["search"] == "hand-set weights"
    ids = [f"i{k:03d}" for k in range(20)]
    got = r.rank(RankContext(mode="recommend"), ids, k=5)
    cat, _ = small_catalog()
    s = booster.predict(candidate_features(RankContext(mode="recommend"), cat.rows(ids), cat).astype(np.float64))
    assert [x["item_id"] for x in got] == [ids[j] for j in np.argsort(-s, kind="stable")[:5]]
    assert resolve(_cfg(root, "none")).ranker_dir is None


def test_a_latest_version_that_did_not_beat_the_hand_weights_is_not_served_unless_named(root):
    out_dir, _ = _ranker_version(root, "20260102T000000Z-lost", {"learned_beats_hand_weights_on_valid": False})
    res = resolve(_cfg(root))
    assert res.ranker_dir is None
    assert res.versions["ranker"] == f"hand-set weights (ranker {out_dir.name} did not beat them on validation)"
    assert resolve(_cfg(root, str(out_dir))).ranker_dir == str(out_dir.resolve())  # named explicitly: used


def test_a_folder_that_is_not_a_ranker_version_is_refused(root):
    with pytest.raises(FileNotFoundError, match="allowed: latest, none"):
        resolve(_cfg(root, str(root / "nowhere")))


def test_a_version_ranks_only_the_shoppers_it_beat_the_hand_weights_on(root):
    """jobs.train_ranker's serves_learned_for: here the model won on shoppers with a history only,
    so a guest's recommendations are ranked by the hand-set weights, a known shopper's by the model."""
    out_dir, booster = _ranker_version(root, "20260103T000000Z-warm", {"learned_beats_hand_weights_on_valid": True,
                                                                        "serves_learned_for": ["with_history"]})
    res = resolve(_cfg(root))
    assert res.ranker_dir == str(out_dir.resolve()) and res.ranker_segments == ("with_history",)
    assert res.versions["ranker"].startswith(f"{out_dir.name} for shoppers with history, hand-set weights")
    r = Ranker(_cfg(root), res, open_live_catalog(_cfg(root), res, lexical=False))
    assert r.info()["recommend"].startswith("learned") and "hand-set weights for shoppers without history" in r.info()["recommend"]
    cat, _ = small_catalog()
    ids = [f"i{k:03d}" for k in range(20)]
    guest, known = RankContext(mode="recommend"), RankContext(mode="recommend", history=[("i003", "view", 0.0)])
    for ctx, scores in ((guest, HandWeights().score(candidate_features(guest, cat.rows(ids), cat), "recommend")),
                        (known, booster.predict(candidate_features(known, cat.rows(ids), cat).astype(np.float64)))):
        got = r.rank(ctx, ids, k=5)
        top = np.argsort(-scores, kind="stable")[:5]
        assert [x["item_id"] for x in got] == [ids[j] for j in top]
        assert [x["score"] for x in got] == pytest.approx(scores[top], abs=1e-5)
    # (the two scorers give these candidates different scores, so the check above tells them apart)
    for c in (guest, known):
        assert not np.allclose(*(s.score(candidate_features(c, cat.rows(ids), cat), "recommend")
                                 for s in (HandWeights(), LearnedRanker({"recommend": booster}, {}))), atol=1e-3)
    # named explicitly: every shopper
    assert resolve(_cfg(root, str(out_dir))).ranker_segments == SEGMENTS


def test_served_segments_reads_the_manifest_and_refuses_unknown_names():
    assert served_segments({"serves_learned_for": ["without_history"]}) == ("without_history",)
    assert served_segments({"serves_learned_for": []}) == ()
    # versions recorded before segments: their overall verdict for every shopper
    assert served_segments({"learned_beats_hand_weights_on_valid": True}) == SEGMENTS
    assert served_segments({"learned_beats_hand_weights_on_valid": False}) == ()
    assert served_segments({}) == SEGMENTS
    with pytest.raises(ValueError, match="allowed: \\['with_history', 'without_history'\\]"):
        served_segments({"serves_learned_for": ["vip"]})
    with pytest.raises(ValueError, match="segments \\['vip'\\] unknown"):
        WithFallback(None, HandWeights(), ("vip",))


def test_a_replica_warms_up_on_start_and_writes_nothing(root, caplog):
    from serving.retriever import RetrieverCore

    _ranker_version(root)  # the learned ranker ranks the warm-up's shopper with a history
    core = RetrieverCore(_cfg(root), resolve(_cfg(root)))
    assert isinstance(core.warm_up_s, float) and core.warm_up_s >= 0
    assert core.info()["warm_up_s"] == core.warm_up_s
    assert core.live.n_changed == 0 and core.live.log_records == 0
    items_log = root / "state" / "items"
    assert not items_log.exists() or not any(p.stat().st_size for p in items_log.rglob("*") if p.is_file())

    def broken(*args, **kwargs):
        raise RuntimeError("index unreadable")

    core.search = broken  # a read that fails: the warm-up says so and the replica still starts
    with caplog.at_level("WARNING", logger="ray.serve"):
        assert core.warm_up() is None
    assert "warm-up read failed (RuntimeError: index unreadable)" in caplog.text


@pytest.mark.parametrize("als_candidates", [0, 5])
def test_the_replica_adds_als_candidates_only_when_configured(root, als_candidates):
    """The Retriever's recommend hands the shopper's ALS vector to the candidate sources: with every
    other source off, the answer is exactly the ALS top items, or nothing when the source is off."""
    from features.data import als as ALS
    from features.data import schema as S
    from features.data.transforms import FeatureParams
    from features.retrieval.live import RetrievalConfig
    from serving.retriever import RetrieverCore

    rng = np.random.default_rng(0)
    pairs = pl.DataFrame([(f"u{u}", f"i{k:03d}") for u in range(150) for k in sorted(set(rng.integers(0, 20, 5).tolist()))],
                         schema={S.USER_ID: pl.String, S.ITEM_ID: pl.String}, orient="row")
    table, _ = ALS.als_table(pairs, FeatureParams(als_factors=6))
    (root / "features" / "v1" / "als").mkdir()
    table.write_parquet(root / "features" / "v1" / "als" / "als.parquet")
    only_als = RetrievalConfig(num_candidates=1, als_candidates=als_candidates, cooc_candidates=0, popular_candidates=0,
                               sequence_candidates=0, ease_candidates=0)
    cfg = ServingConfig(artifacts_root=str(root), state_dir=str(root / "state"), retriever=only_als)
    core = RetrieverCore(cfg, resolve(cfg))
    cat = core.live.catalog
    assert len(cat.als) == 20
    ctx = RankContext(mode="recommend", recent_items=[("i003", "purchase"), ("i007", "view")])
    results, _ = core.recommend(ctx, None, frozenset(), 10)
    s = cat.als.all_scores(ctx.als_user, len(cat))
    top = {cat.item_ids[r] for r in np.argsort(-s, kind="stable")[:als_candidates]}
    assert {r["item_id"] for r in results} == top and len(top) == als_candidates
