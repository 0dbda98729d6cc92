"""The query tower's adapter: learns a distortion between query and item vectors from judged
pairs, early-stops on validation, reports whether it beats zero-shot, and round-trips to disk."""

from __future__ import annotations

import numpy as np
import pytest

from features import metrics as M
from features.models.query_adapter import AdapterParams, QueryAdapter, Targets, cross_validate_adapter, train_adapter


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


def test_cross_validation_picks_the_epochs_on_every_query_and_reports_out_of_fold_scores():
    rng = np.random.default_rng(3)
    d, n_items, n_q = 32, 300, 150
    items = _unit(rng.normal(size=(n_items, d)))
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    target = rng.integers(0, n_items, n_q)
    queries = _unit(items[target] @ (0.3 * np.eye(d) + 0.7 * rot).T + 0.05 * rng.normal(size=(n_q, d)))
    tg = [Targets(np.array([t]), np.array([1.0])) for t in target]
    seen: list[np.ndarray] = []

    def hit1(vectors: np.ndarray, which: np.ndarray) -> np.ndarray:
        seen.append(np.asarray(which))
        return (np.argmax(vectors @ items.T, axis=1) == target[which]).astype(np.float64)

    adapter, oof, zero, vecs, info = cross_validate_adapter(queries, tg, items, hit1, AdapterParams(rank=16, max_epochs=40, patience=5),
                                                      folds=3)
    np.testing.assert_array_equal(zero, hit1(queries, np.arange(n_q)))  # the zero-shot score of every query
    assert oof.shape == zero.shape == (n_q,) and oof.mean() > zero.mean() + 0.1
    # every query is scored out of fold: each epoch's calls cover every query exactly once
    assert np.array_equal(np.sort(np.concatenate(seen[1:4])), np.arange(n_q))
    curve = info["out_of_fold_curve"]
    assert info["best_epoch"] == int(np.argmax(curve)) >= 1 and curve[info["best_epoch"]] == pytest.approx(oof.mean(), abs=1e-6)
    assert len(curve) == info["epochs"] + 1 and info["epochs"] - info["best_epoch"] <= 5 and info["folds"] == 3
    # the returned adapter is trained on all queries for the chosen number of epochs
    assert hit1(adapter.apply(queries), np.arange(n_q)).mean() > zero.mean() + 0.1
    assert info["folds_trained"] == 3 and info["held_out_queries"] == n_q  # a small set: every query held out once
    # the out-of-fold vectors are the ones those scores came from (each query's by the fold that did not train on it)
    np.testing.assert_array_equal(hit1(vecs, np.arange(n_q)), oof)
    assert not np.array_equal(vecs, adapter.apply(queries))
    with pytest.raises(ValueError, match="folds >= 2 and at least that many queries; got folds=5, 3 queries"):
        cross_validate_adapter(queries[:3], tg[:3], items, hit1, folds=5)
    # a set large enough that one fold holds out min_held_out queries: only that fold is trained, and
    # the queries it did not hold out are NaN in both score arrays (the caller's pairing skips them)
    adapter, oof, zero, vecs, info = cross_validate_adapter(queries, tg, items, hit1, AdapterParams(rank=16, max_epochs=40, patience=5),
                                                      folds=3, min_held_out=50)
    assert info["folds_trained"] == 1 and info["held_out_queries"] == 50 and info["train_queries"] == n_q
    assert np.isnan(oof).sum() == np.isnan(zero).sum() == np.isnan(vecs[:, 0]).sum() == n_q - 50
    assert np.nanmean(oof) > np.nanmean(zero) + 0.1


def test_cross_validation_keeps_zero_shot_when_training_only_hurts():
    # targets unrelated to the queries: no epoch beats the identity, so 0 epochs is chosen
    rng = np.random.default_rng(4)
    items = _unit(rng.normal(size=(200, 16)))
    queries = items[:60].copy()
    tg = [Targets(np.array([int(t)]), np.array([1.0])) for t in rng.integers(0, 200, 60)]

    def self_hit(vectors: np.ndarray, which: np.ndarray) -> np.ndarray:  # the query's own item first
        return (np.argmax(vectors @ items.T, axis=1) == which).astype(np.float64)

    adapter, oof, zero, vecs, info = cross_validate_adapter(queries, tg, items, self_hit, AdapterParams(rank=4, max_epochs=30, patience=3))
    assert info["best_epoch"] == 0 and info["best"] == info["zero_shot"] == 1.0 and zero.mean() == 1.0
    np.testing.assert_array_equal(oof, zero)
    np.testing.assert_allclose(adapter.apply(queries), queries, atol=1e-6)  # untrained: the identity
    np.testing.assert_array_equal(vecs, queries)
