"""Encoder, loss and index against oracles: one-by-one encoding, hand-computed loss, numpy search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from features.models.encoder import EncoderConfig, TwoTowerEncoder, by_length
from features.models.losses import info_nce
from features.retrieval.index import IndexConfig, ItemIndex, brute_force


@pytest.fixture(scope="module")
def encoder() -> TwoTowerEncoder:
    torch.manual_seed(0)
    return TwoTowerEncoder(EncoderConfig(max_length=32, batch_size=4))


TEXTS = ["red mug", "WHITE HANGING HEART T-LIGHT HOLDER", "白色陶瓷杯", "regency cakestand 3 tier",
         "bought: jumbo bag red retrospot; bought: lunch bag black skull", "x " * 200, "glass star frosted"]


def test_batched_encoding_equals_one_by_one(encoder):
    batched = encoder.encode(TEXTS, batch_size=3)
    single = np.stack([encoder.encode([t], batch_size=1)[0] for t in TEXTS])
    assert batched.shape == (len(TEXTS), 384) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_batches_group_texts_of_similar_length_and_cover_every_row_once():
    texts = ["a b c d e f", None, "ab", "a much longer text than the others", "abc", 7]
    batches = by_length(texts, [0, 2, 3, 4, 5], 2)  # row 1 (None) is not asked for
    assert sorted(r for b in batches for r in b) == [0, 2, 3, 4, 5] and [len(b) for b in batches] == [2, 2, 1]
    flat = [r for b in batches for r in b]
    assert flat == [5, 2, 4, 0, 3]  # by length of the text as a string, stable among equals
    assert by_length(TEXTS, range(len(TEXTS)), 100) == [sorted(range(len(TEXTS)), key=lambda i: len(TEXTS[i]))]


def test_missing_and_blank_text_encode_to_zero_and_others_are_unaffected(encoder):
    out = encoder.encode([None, "", "   ", "red mug"], tower="item")
    assert np.all(out[:3] == 0)
    np.testing.assert_allclose(out[3], encoder.encode(["red mug"], tower="item")[0], atol=2e-5)


def test_semantics_survive_packaging(encoder):
    q = encoder.encode(["coffee mug"])
    items = encoder.encode(["ceramic tea cup", "garden hose 20m", "red retrospot mug"], tower="item")
    sims = (items @ q.T).ravel()
    assert sims[2] > sims[1] and sims[0] > sims[1]


def test_checkpoint_round_trip(encoder, tmp_path):
    with torch.no_grad():  # perturb so the test cannot pass by reloading the base weights
        encoder.query_model.embeddings.word_embeddings.weight[:50] += 0.01
    try:
        encoder.save(tmp_path / "ckpt")
        assert (tmp_path / "ckpt" / "model.safetensors").is_file()
        assert not list((tmp_path / "ckpt").glob("*.bin")) and not list((tmp_path / "ckpt").glob("*.pt"))
        again = TwoTowerEncoder.load(tmp_path / "ckpt")
        np.testing.assert_allclose(again.encode(TEXTS), encoder.encode(TEXTS), atol=1e-6)
    finally:
        with torch.no_grad():
            encoder.query_model.embeddings.word_embeddings.weight[:50] -= 0.01


def test_bad_model_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        TwoTowerEncoder(EncoderConfig(model_dir=str(tmp_path)))


def test_info_nce_equals_hand_computed_value():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    i = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    t = 0.5
    # query 0: logits [0.6, 0.0]/t -> -log softmax[0]; query 1: logits [0.8, 1.0]/t -> -log softmax[1]
    l0 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(0.0)))
    l1 = -math.log(math.exp(2.0) / (math.exp(1.6) + math.exp(2.0)))
    assert info_nce(q, i, t).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    hard = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])  # one hard negative each: logits 0.0 and 0.0
    h0 = -math.log(math.exp(1.2) / (math.exp(1.2) + 1 + 1))
    h1 = -math.log(math.exp(2.0) / (math.exp(1.6) + math.exp(2.0) + 1))
    assert info_nce(q, i, t, hard_neg_emb=hard).item() == pytest.approx((h0 + h1) / 2, rel=1e-6)
    same = torch.tensor([7, 7])  # both targets are the same product: no in-batch negatives left
    assert info_nce(q, i, t, item_keys=same).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, i, 0.0)


def _catalog(n: int, d: int = 24, seed: int = 3) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Clustered unit vectors (like text embeddings of a catalog: products come in families)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, d))
    emb = (centers[rng.integers(0, 64, n)] + 1.0 * rng.normal(size=(n, d))).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = (centers[rng.integers(0, 64, 50)] + 1.0 * rng.normal(size=(50, d))).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return [f"item-{i}" for i in range(n)], emb, q


def test_flat_index_equals_numpy_brute_force_on_awkward_size(tmp_path):
    ids, emb, q = _catalog(1_037)
    index = ItemIndex.build(ids, emb, IndexConfig(kind="auto"))
    assert index.kind == "flat"
    scores, got = index.search(q, 10)
    exp_scores, exp_rows = brute_force(q, emb, 10)
    np.testing.assert_allclose(scores, exp_scores, atol=1e-5)
    assert got == [[ids[j] for j in row] for row in exp_rows]
    index.save(tmp_path / "idx")
    again = ItemIndex.load(tmp_path / "idx")
    assert again.search(q, 10)[1] == got
    few_scores, few = ItemIndex.build(ids[:3], emb[:3]).search(q[:1], 5)
    assert few[0][3:] == [None, None] and np.isneginf(few_scores[0][3:]).all()


@pytest.mark.parametrize("kind, bound", [("ivf", 0.90), ("hnsw", 0.95)])
def test_approximate_indexes_recall_at_10_against_brute_force(kind, bound):
    ids, emb, q = _catalog(6_007)
    index = ItemIndex.build(ids, emb, IndexConfig(kind=kind))
    _, got = index.search(q, 10)
    _, exp_rows = brute_force(q, emb, 10)
    recall = np.mean([len(set(g) & {ids[j] for j in e}) / 10 for g, e in zip(got, exp_rows)])
    print(f"{kind} recall@10 vs brute force: {recall:.3f} (params {index.params})")
    assert recall >= bound


def test_int8_encoder_stays_close_to_float_and_refuses_to_be_saved(tmp_path):
    from features.models.encoder import quantize_int8

    fp32 = TwoTowerEncoder(EncoderConfig(max_length=32))
    int8 = quantize_int8(TwoTowerEncoder(EncoderConfig(max_length=32)))
    a, b = fp32.encode(TEXTS), int8.encode(TEXTS)
    cos = (a * b).sum(1)
    assert cos.min() > 0.8, cos  # per-tensor int8 is lossy; bench/encoder.py measures what it costs in Recall@10
    assert int8.item_model is int8.query_model  # shared towers stay shared
    with pytest.raises(ValueError, match="quantised"):
        int8.save(tmp_path / "q")
