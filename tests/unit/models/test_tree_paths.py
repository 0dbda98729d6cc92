"""Decision-path contributions of a LightGBM ranker: exact sums, LightGBM's own routing of zeros
and missing values, and the same leading reason as TreeSHAP where one feature carries the model."""

from __future__ import annotations

import numpy as np
import pytest

from features.models.tree_paths import PathAttribution


def _rows(rng, n: int, d: int = 8) -> np.ndarray:
    x = rng.random((n, d))
    x[rng.random(x.shape) < 0.3] = 0.0  # zeros: "missing" for zero_as_missing models
    x[rng.random(x.shape) < 0.05] = np.nan
    return x


def _booster(zero_as_missing: bool, seed: int = 0):
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    x = _rows(rng, 6000)
    signal = 3 * np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2]) + 0.3 * rng.random(len(x))
    y = (signal > np.quantile(signal, 0.9)).astype(float)
    params = {"objective": "lambdarank", "num_leaves": 15, "min_data_in_leaf": 20, "learning_rate": 0.1,
              "zero_as_missing": zero_as_missing, "verbosity": -1, "num_threads": 1, "seed": seed}
    return lgb.train(params, lgb.Dataset(x, y, group=np.full(60, 100)), num_boost_round=80)


@pytest.mark.parametrize("zero_as_missing", [False, True])
def test_contributions_plus_the_root_values_are_the_raw_score_for_every_row(zero_as_missing):
    booster = _booster(zero_as_missing)
    paths = PathAttribution(booster)
    x = _rows(np.random.default_rng(1), 400)
    c = paths.contributions(x)
    assert c.shape == (400, 9) and np.all(c[:, -1] == paths.bias)
    # a single wrong turn at any split (a zero, a NaN, a value on a threshold) would change the sum
    np.testing.assert_allclose(c.sum(axis=1), booster.predict(x, raw_score=True), rtol=0, atol=1e-9)
    on_thresholds = np.tile(paths.thr[~paths.leaf][:8], (8, 1))[:, :8]
    np.testing.assert_allclose(paths.contributions(on_thresholds).sum(axis=1),
                               booster.predict(on_thresholds, raw_score=True), rtol=0, atol=1e-9)


def test_the_leading_reason_agrees_with_treeshap_where_one_feature_carries_the_model():
    booster = _booster(False)
    x = _rows(np.random.default_rng(2), 300)
    x[:, 0] = np.random.default_rng(3).random(300)  # no missing values in the feature that matters
    path = PathAttribution(booster).contributions(x)[:, :-1]
    shap = booster.predict(x, pred_contrib=True)[:, :-1]
    strong = np.abs(shap[:, 0]) > 0.5  # rows where the model's main feature moved the score a lot
    assert strong.sum() > 50
    # path attributions credit the split that happened, not every order of splits: measured 0.88 here
    assert np.mean(np.argmax(np.abs(path[strong]), 1) == np.argmax(np.abs(shap[strong]), 1)) > 0.8


def test_no_rows_and_wrong_shapes():
    paths = PathAttribution(_booster(False))
    assert paths.contributions(np.zeros((0, 8))).shape == (0, 9)
    with pytest.raises(ValueError, match=r"x must be \(rows, 8\), got \(3, 5\)"):
        paths.contributions(np.zeros((3, 5)))


def test_the_serving_setting_names_its_allowed_values():
    from serving.settings import RankerServing

    assert RankerServing().explanations == "treeshap"
    with pytest.raises(ValueError, match="ranker.explanations: 'shap'; allowed: path, treeshap"):
        RankerServing(explanations="shap")
