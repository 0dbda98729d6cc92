"""Ranking metrics against hand-computed values; training pieces (schedule, freezing, checkpoint
with optimizer state, sharded evaluation) against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from features import metrics as M
from features.models import training as TR
from features.models.encoder import EncoderConfig, TwoTowerEncoder, load_encoder, resolve_checkpoint
from features.models.losses import info_nce


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sort_positions_and_top_k_equal_a_stable_full_sort_ties_included(seed):
    """The evaluation's shortcuts (no full argsort of the catalog per query) give exactly what the
    stable descending sort gives, ties to the lower index included."""
    from features.evaluation.search import top_k_rows
    from features.metrics import top_k

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 40, 500).astype(np.float32) / 7  # many ties
    scores[[3, 77, 401]] = scores.max()  # a tie at the very top
    order = np.argsort(-scores, kind="stable")
    position = np.empty(len(scores), np.int64)
    position[order] = np.arange(len(scores))
    for n_rows in (1, 5, 32, 33, 60):  # counted (a few rows) and sorted (many)
        rows = rng.choice(len(scores), n_rows, replace=False)
        assert M.sort_positions(scores, rows).tolist() == position[rows].tolist()
    top = M.sort_positions(scores, np.array([401, 3, 77])).tolist()  # the tie at the top, by index
    assert top == position[[401, 3, 77]].tolist() and top[1] == 0 and top[1] < top[2] < top[0]
    for k in (1, 10, 499, 500, 900):
        assert top_k(scores, k).tolist() == order[:k].tolist()
    assert top_k(scores, 0).tolist() == []
    items = rng.integers(0, 5, (300, 4)).astype(np.float32)  # dot products with many ties
    queries = rng.integers(0, 3, (7, 4)).astype(np.float32)
    expected = [np.argsort(-(items @ q), kind="stable")[:20].tolist() for q in queries]
    assert top_k_rows(queries, items, 20, chunk=3).tolist() == expected


def test_target_ranks_ties_count_against_the_model_and_missing_targets_miss():
    scores = np.array([
        [0.9, 0.5, 0.1, 0.3],  # target 1: one item above -> rank 1
        [0.2, 0.2, 0.2, 0.2],  # all tied: pessimistic rank 3
        [0.1, 0.2, 0.3, 0.4],  # target 3 best -> rank 0
        [0.4, 0.3, 0.2, 0.1],  # missing target
    ])
    ranks = M.target_ranks(scores, np.array([1, 0, 3, M.MISSING]))
    assert ranks[:3].tolist() == [1, 3, 0] and ranks[3] == M.MISSING_RANK
    assert M.hit_rate_at_k(ranks, 1) == pytest.approx(1 / 4)
    assert M.hit_rate_at_k(ranks, 2) == pytest.approx(2 / 4)
    # NDCG@2: rank0 -> 1, rank1 -> 1/log2(3), rank3 and missing -> 0
    assert M.ndcg_at_k(ranks, 2) == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert M.mrr(ranks) == pytest.approx((1 / 2 + 1 / 4 + 1 + 0) / 4)
    # A catalog smaller than k must not turn a missing target into a hit.
    assert M.hit_rate_at_k(ranks, 10) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="target_idx"):
        M.target_ranks(scores, np.array([0, 1, 2, 4]))


def test_shard_sums_add_up_to_the_whole():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 30))
    targets = rng.integers(-1, 30, 50)
    ranks = M.target_ranks(scores, targets)
    a, b = M.rank_sums(ranks[:17], (5, 10)), M.rank_sums(ranks[17:], (5, 10))
    whole = M.means({k: a[k] + b[k] for k in a})
    assert whole["recall@5"] == pytest.approx(M.hit_rate_at_k(ranks, 5))
    assert whole["ndcg@10"] == pytest.approx(M.ndcg_at_k(ranks, 10))
    assert whole["count"] == 50


def test_retrieval_metrics_equal_a_python_loop():
    rng = np.random.default_rng(1)
    q, items = rng.normal(size=(23, 8)), rng.normal(size=(41, 8))
    targets = rng.integers(0, 41, 23)
    got = M.retrieval_metrics(q, items, targets, ks=(1, 10), chunk=5)
    hits, dcg = 0, 0.0
    for qi, t in zip(q, targets):
        s = items @ qi
        r = int((s > s[t]).sum())
        hits += r < 10
        dcg += 1 / math.log2(r + 2) if r < 10 else 0.0
    assert got["recall@10"] == pytest.approx(hits / 23)
    assert got["ndcg@10"] == pytest.approx(dcg / 23)


def test_query_keys_mask_other_targets_of_the_same_anchor():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1: one history, two basket items
    i = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    t = 0.5
    logits = (q @ i.T / t).tolist()
    # Row 0 loses row 1's item from its negatives and vice versa; row 2 keeps all three.
    l0 = -math.log(math.exp(logits[0][0]) / (math.exp(logits[0][0]) + math.exp(logits[0][2])))
    l1 = -math.log(math.exp(logits[1][1]) / (math.exp(logits[1][1]) + math.exp(logits[1][2])))
    l2 = -math.log(math.exp(logits[2][2]) / sum(math.exp(x) for x in logits[2]))
    got = info_nce(q, i, t, query_keys=torch.tensor([5, 5, 9]))
    assert got.item() == pytest.approx((l0 + l1 + l2) / 3, rel=1e-6)
    assert info_nce(q, i, t).item() != pytest.approx(got.item())


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [TR.lr_at(s, 1.0, 4, 14) for s in range(16)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[14] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


@pytest.fixture(scope="module")
def encoder() -> TwoTowerEncoder:
    torch.manual_seed(0)
    return TwoTowerEncoder(EncoderConfig(max_length=16, batch_size=8))


def test_freeze_leaves_only_upper_layers_trainable(encoder):
    enc = TwoTowerEncoder(EncoderConfig(max_length=16))
    total = sum(p.numel() for p in enc.parameters())
    left = TR.freeze(enc, embeddings=True, layers=2)
    m = enc.query_model
    assert not any(p.requires_grad for p in m.embeddings.parameters())
    assert not any(p.requires_grad for p in m.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in m.encoder.layer[2].parameters())
    assert 0 < left < total / 2
    with pytest.raises(ValueError, match="freeze_layers"):
        TR.freeze(enc, embeddings=False, layers=99)


def test_training_checkpoint_round_trips_weights_optimizer_and_state(tmp_path):
    torch.manual_seed(0)
    enc = TwoTowerEncoder(EncoderConfig(max_length=16))
    TR.freeze(enc, embeddings=True, layers=4)
    params = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    model = TR.PairModel(enc)
    anchors, targets = ["bought: red mug", "bought: tea set", "viewed: cake stand"], ["red mug", "teapot", "cake tin"]
    keys = torch.tensor([1, 2, 3])
    for _ in range(2):
        loss = TR.pair_loss(model, enc, anchors, targets, keys, keys, 0.05, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    TR.save_checkpoint(tmp_path / "ck", enc, opt, {"step": 2, "best": 0.5})

    enc2 = TwoTowerEncoder(EncoderConfig(max_length=16))
    TR.freeze(enc2, embeddings=True, layers=4)
    opt2 = torch.optim.AdamW([p for p in enc2.parameters() if p.requires_grad], lr=1e-3)
    state = TR.restore_into(enc2, tmp_path / "ck", opt2)
    assert state == {"step": 2, "best": 0.5}
    np.testing.assert_allclose(enc2.encode(anchors), enc.encode(anchors), atol=1e-6)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid in s1["state"]:
        for name, v in s1["state"][pid].items():
            torch.testing.assert_close(s2["state"][pid][name], v)
    # One more identical step on both gives identical weights: the optimizer state really resumed
    # (a fresh AdamW state would take a different step: its moments would start from zero).
    for e, o in ((enc, opt), (enc2, opt2)):
        torch.manual_seed(1)  # same dropout masks for both
        loss = TR.pair_loss(TR.PairModel(e), e, anchors, targets, keys, keys, 0.05, torch.device("cpu"))
        o.zero_grad()
        loss.backward()
        o.step()
    np.testing.assert_allclose(enc2.encode(anchors), enc.encode(anchors), atol=1e-5)


def test_evaluate_equals_brute_force_ranking(encoder):
    items = ["red mug", "blue mug", "garden hose", None, "cake stand", "tea set"]
    anchors = ["bought: red mug", "searched: hose", "", "bought: cake tin"]
    targets = np.array([1, 2, 0, M.MISSING])
    got = TR.evaluate(encoder, items, anchors, targets, ks=(1, 3))
    exp = M.retrieval_metrics(encoder.encode(anchors), encoder.encode(items, tower="item"), targets, ks=(1, 3))
    for k in ("recall@1", "recall@3", "ndcg@3", "mrr"):
        assert got[k] == pytest.approx(exp[k])
    assert got["count"] == 4


def test_example_ranks_are_what_evaluate_averages(encoder):
    items = ["red mug", "blue mug", "garden hose", None, "cake stand", "tea set"]
    anchors = ["bought: red mug", "searched: hose", "", "bought: cake tin"]
    targets = np.array([1, 2, 0, M.MISSING])
    ranks = TR.example_ranks(encoder, items, anchors, targets, batch_size=3)
    assert ranks[3] == M.MISSING_RANK
    assert M.ndcg_gains(ranks, 3).mean() == pytest.approx(TR.evaluate(encoder, items, anchors, targets, ks=(3,))["ndcg@3"])


def test_evaluate_with_ranks_keeps_each_example_s_rank_for_a_later_comparison(encoder):
    """The training loop keeps these ranks in its checkpoints, so the job compares the best one with
    zero-shot without encoding the catalog again (jobs/train_encoder.py)."""
    items = ["red mug", "blue mug", "garden hose", None, "cake stand", "tea set"]
    anchors = ["bought: red mug", "searched: hose", "", "bought: cake tin"]
    targets = np.array([1, 2, 0, M.MISSING])
    metrics, ranks = TR.evaluate_with_ranks(encoder, items, anchors, targets, ks=(3,))
    assert metrics == TR.evaluate(encoder, items, anchors, targets, ks=(3,))
    np.testing.assert_array_equal(ranks, TR.example_ranks(encoder, items, anchors, targets))
    assert ranks.dtype == np.int64 and M.ndcg_gains(ranks, 3).mean() == pytest.approx(metrics["ndcg@3"])


def test_a_fine_tune_beats_zero_shot_only_where_the_paired_interval_is_above_zero():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 30, size=800)
    # one example in four moves from rank 5 or worse to rank 0: a clear gain
    better = np.where(np.arange(800) % 4 == 0, 0, base)
    won = TR.versus_base(better, base, k=10)
    assert won["beats"] and won["paired_difference_ci95"][0] > 0 and won["examples"] == 800
    assert won["paired_difference"] == pytest.approx(M.ndcg_gains(better, 10).mean() - M.ndcg_gains(base, 10).mean(), abs=1e-6)
    # a higher mean by a hair (two examples of 800 improved) is inside the noise: zero-shot stays
    hair = base.copy()
    hair[np.flatnonzero(base > 0)[:2]] = 0
    level = TR.versus_base(hair, base, k=10)
    assert level["fine_tuned"] > level["zero_shot"] and not level["beats"]
    assert level["paired_difference_ci95"][0] <= 0 < level["paired_difference_ci95"][1]
    assert not TR.versus_base(base, better, k=10)["beats"]
    assert not TR.versus_base(np.zeros(0), np.zeros(0))["beats"]
    with pytest.raises(ValueError, match="same examples"):
        TR.versus_base(base[:5], base[:6])


def test_the_encoder_job_pairs_its_fine_tune_with_the_model_it_started_from(encoder):
    from jobs.train_encoder import TrainEncoderConfig, versus_zero_shot

    items = ["red mug", "blue mug", "garden hose", "cake stand", "tea set", "lunch bag"]
    anchors = ["bought: red mug", "searched: hose", "bought: cake tin", "searched: lunch"] * 5
    targets = np.array([1, 2, 3, 5] * 5)
    cfg = TrainEncoderConfig(encoder=EncoderConfig(max_length=16, batch_size=8))
    # a "fine-tune" that is the starting model itself: same ranks, difference 0, zero-shot stays
    same = versus_zero_shot(cfg, encoder, items, anchors, targets)
    assert same["examples"] == 20 and same["paired_difference"] == 0 and not same["beats"]
    assert same["zero_shot"] == pytest.approx(TR.evaluate(encoder, items, anchors, targets, ks=(10,))["ndcg@10"], abs=1e-6)


def test_resolve_checkpoint_accepts_each_folder_shape(encoder, tmp_path):
    assert resolve_checkpoint("zero-shot") is None
    with pytest.raises(FileNotFoundError, match="no complete encoder version"):
        resolve_checkpoint("latest", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="not 'latest', 'zero-shot'"):
        resolve_checkpoint(str(tmp_path))
    encoder.save(tmp_path / "v1" / "model")
    assert resolve_checkpoint(str(tmp_path / "v1")) == str(tmp_path / "v1" / "model")
    TR.save_checkpoint(tmp_path / "ck", encoder, None, {})
    assert resolve_checkpoint(str(tmp_path / "ck")) == str(tmp_path / "ck" / "encoder")
    loaded, path = load_encoder(str(tmp_path / "ck"))
    assert path.endswith("encoder") and loaded.cfg.max_length == 16


def test_full_softmax_and_logq_equal_hand_computed_values():
    from features.models.losses import full_softmax

    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    catalog = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    t = 0.5
    # query 0 -> target row 2: logits [1.2, 0, 2]; query 1 -> target row 0: logits [1.6, 2, 0]
    l0 = -math.log(math.exp(2.0) / (math.exp(1.2) + 1 + math.exp(2.0)))
    l1 = -math.log(math.exp(1.6) / (math.exp(1.6) + math.exp(2.0) + 1))
    assert full_softmax(q, catalog, torch.tensor([2, 0]), t).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # logQ: logits minus log q of each in-batch item (positives included)
    i = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    log_q = torch.tensor([math.log(0.9), math.log(0.1)])
    a0 = [0.6 / t - log_q[0].item(), 0.0 / t - log_q[1].item()]
    a1 = [0.8 / t - log_q[0].item(), 1.0 / t - log_q[1].item()]
    exp = (-math.log(math.exp(a0[0]) / sum(map(math.exp, a0))) - math.log(math.exp(a1[1]) / sum(map(math.exp, a1)))) / 2
    assert info_nce(q, i, t, item_log_q=log_q).item() == pytest.approx(exp, rel=1e-6)


def test_frozen_item_tower_needs_separate_towers_and_stays_put():
    shared = TwoTowerEncoder(EncoderConfig(max_length=16))
    with pytest.raises(ValueError, match="share_towers=false"):
        TR.freeze_item_tower(shared)
    enc = TwoTowerEncoder(EncoderConfig(max_length=16, share_towers=False))
    TR.freeze_item_tower(enc)
    TR.freeze(enc, embeddings=True, layers=0)
    before = enc.encode(["red mug"], tower="item")
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-2)
    catalog = torch.from_numpy(enc.encode(["red mug", "tea set", "hose"], tower="item"))
    loss = TR.pair_loss(TR.PairModel(enc), enc, ["bought: red mug", "bought: teapot"], ["", ""],
                        torch.tensor([0, 1]), torch.tensor([1, 2]), 0.05, torch.device("cpu"), catalog_emb=catalog)
    loss.backward()
    opt.step()
    np.testing.assert_array_equal(enc.encode(["red mug"], tower="item"), before)
    assert not np.allclose(enc.encode(["red mug"], tower="query"), before)


# --- list metrics --------------------------------------------------------------------------------
def test_set_metrics_by_hand():
    lists = np.array([[3, 1, 2], [5, -1, -1], [7, 8, 9]])
    relevant = [{1, 4}, {5}, set()]
    m = M.set_metrics_at_k(lists, relevant, 3)
    # request 0: 1 hit of 3 slots, 1 of 2 relevant; request 1: 1 of 3 slots (short list), 1 of 1; request 2: none
    p = [1 / 3, 1 / 3, 0.0]
    r = [0.5, 1.0, 0.0]
    f1 = [2 * (1 / 3) * 0.5 / (1 / 3 + 0.5), 2 * (1 / 3) / (4 / 3), 0.0]
    assert m["precision@3"] == pytest.approx(np.mean(p))
    assert m["recall@3"] == pytest.approx(np.mean(r))
    assert m["f1@3"] == pytest.approx(np.mean(f1))
    assert M.set_metrics_at_k(lists, relevant, 1)["precision@1"] == pytest.approx(1 / 3)  # only [5]


def test_coverage_diversity_novelty_by_hand():
    lists = np.array([[0, 1], [1, -1]])
    assert M.catalog_coverage(lists, 4, 2) == 0.5
    assert M.catalog_coverage(lists, 4, 1) == 0.5  # items 0 and 1
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    assert M.intra_list_diversity(np.array([[0, 1, 3]]), emb, 3) == pytest.approx(
        ((1 - 0.0) + (1 - 0.6) + (1 - 0.8)) / 3)
    assert M.intra_list_diversity(np.array([[0, 2]]), emb, 2) == pytest.approx(0.0)  # identical items
    assert M.intra_list_diversity(lists[1:], emb, 2) == 0.0  # one item: skipped
    share = np.array([0.5, 0.25, 0.0, 1.0])
    assert M.novelty(np.array([[0, 1, 2]]), share, 3, n_users=8) == pytest.approx((1 + 2 + 3) / 3)


def test_list_metrics_by_hand_with_missing_targets_and_padding():
    lists = np.array([
        [3, 1, 4, -1],  # relevant {1, 9}: 9 is not in the catalog (missing): a hit at rank 1 only
        [5, 6, 7, 8],   # relevant {2}: never retrieved
        [2, 0, -1, -1], # relevant {2, 0}: both at ranks 0, 1 (padding after)
    ])
    rel = [{1, -2}, {2}, {2, 0}]  # -2: a target outside the catalog, still counted in |relevant|
    got = M.list_metrics(lists, rel, ks=(1, 2))
    d1 = 1 / math.log2(3)  # discount of rank 1
    assert got["hit_rate@1"] == pytest.approx(1 / 3)
    assert got["hit_rate@2"] == pytest.approx(2 / 3)
    assert got["recall@1"] == pytest.approx((0 + 0 + 1 / 1) / 3)  # divided by min(|rel|, k)
    assert got["recall@2"] == pytest.approx((1 / 2 + 0 + 2 / 2) / 3)
    assert got["ndcg@1"] == pytest.approx((0 + 0 + 1) / 3)
    assert got["ndcg@2"] == pytest.approx((d1 / (1 + d1) + 0 + 1) / 3)
    assert got["mrr"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert got["count"] == 3
    with pytest.raises(ValueError, match="at least one relevant"):
        M.list_metrics(lists, [{1}, set(), {2}], ks=(1,))
    with pytest.raises(ValueError, match="3 lists but 2"):
        M.list_metrics(lists, [{1}, {2}], ks=(1,))


def test_graded_ndcg_by_hand_including_ties_and_unjudged_items():
    gains = M.grade_gain(np.array([1, 2, 3, 4]))
    assert gains.tolist() == [0.0, 1.0, 3.0, 7.0]
    # Query A: judged gains {7, 3, 0}; the method returns 3, an unjudged item (0), then 7.
    ideal_a = np.array([7.0, 3.0, 0.0])
    got_a = np.array([3.0, 0.0, 7.0])
    dcg = 3 + 0 + 7 / math.log2(4)
    idcg = 7 + 3 / math.log2(3)
    # Query B: two items tied at the top grade, either order is ideal.
    ideal_b, got_b = np.array([3.0, 3.0]), np.array([3.0, 3.0])
    # Query C: everything judged irrelevant: skipped.
    assert M.graded_ndcg([got_a, got_b, np.zeros(2)], [ideal_a, ideal_b, np.zeros(2)], k=3) == pytest.approx(
        (dcg / idcg + 1.0) / 2)
    # At k=1 only the first position counts: 3 / 7 for A.
    assert M.graded_ndcg([got_a], [ideal_a], k=1) == pytest.approx(3 / 7)
