"""The query tower's adapter: learns a distortion between query and item vectors from judged
pairs, early-stops on validation, reports whether it beats zero-shot, and round-trips to disk."""

from __future__ import annotations

import numpy as np
import pytest

from features import metrics as M
from features.models.query_adapter import AdapterParams, QueryAdapter, Targets, train_adapter


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_adapter_learns_a_query_distortion_and_beats_zero_shot_on_held_out_queries(tmp_path):
    rng = np.random.default_rng(0)
    d, n_items, n_q = 32, 400, 300
    items = _unit(rng.normal(size=(n_items, d)))
    # queries live in a rotated space: q = R @ target + noise, so zero-shot retrieval is poor
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    mix = 0.5 * np.eye(d) + 0.5 * rot
    target = rng.integers(0, n_items, n_q)
    queries = _unit(items[target] @ mix.T + 0.05 * rng.normal(size=(n_q, d)))
    train, valid = np.arange(200), np.arange(200, 300)

    def hit1(a: QueryAdapter | None, qs=valid) -> float:
        qv = queries[qs] if a is None else a.apply(queries[qs])
        return float(np.mean(np.argmax(qv @ items.T, axis=1) == target[qs]))

    adapter, info = train_adapter(queries[train], [Targets(np.array([t]), np.array([1.0])) for t in target[train]],
                                  items, hit1, AdapterParams(rank=16, max_epochs=60, patience=10))
    assert info["better_than_zero_shot"] and info["best"] > info["zero_shot"] + 0.1
    assert info["best"] == pytest.approx(hit1(adapter))  # the best epoch's adapter is the one returned
    assert 1 <= info["best_epoch"] <= info["epochs"] <= 60
    out = adapter.apply(queries[:5])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(adapter.apply(queries[0]), out[0], atol=1e-6)  # one vector or a batch
    adapter.save(tmp_path / "qa", {"fold": 0})
    again = QueryAdapter.load(tmp_path / "qa")
    np.testing.assert_allclose(again.apply(queries[:5]), out, atol=1e-6)


def test_an_untrained_adapter_is_the_identity_and_bad_input_is_named():
    q = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    ident = QueryAdapter(np.zeros((8, 4), np.float32), np.ones((8, 4), np.float32))
    np.testing.assert_allclose(ident.apply(q), q / np.linalg.norm(q, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="query vectors have 5 dimensions; the adapter was trained on 8"):
        ident.apply(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="query_adapter: rank"):
        AdapterParams(rank=0)
    with pytest.raises(ValueError, match="no training query has a positive target"):
        train_adapter(q, [Targets(np.array([0]), np.array([0.0]))] * 3, q, lambda a: 0.0)


def test_graded_targets_weight_the_better_item_higher():
    # one query, two positives of gains 3 and 1: after training the gain-3 item ranks first
    rng = np.random.default_rng(2)
    items = _unit(rng.normal(size=(50, 16)))
    q = _unit(items[7] + items[9] + 0.1 * rng.normal(size=16))[None, :]
    tg = [Targets(np.array([7, 9]), M.grade_gain(np.array([3.0, 2.0])))]
    adapter, _ = train_adapter(q, tg, items, lambda a: 0.0 if a is None else float(
        (a.apply(q) @ items.T)[0, 7] - (a.apply(q) @ items.T)[0, 9]), AdapterParams(rank=4, max_epochs=30, patience=30))
    s = adapter.apply(q) @ items.T
    assert s[0, 7] > s[0, 9]
