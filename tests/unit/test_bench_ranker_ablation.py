"""bench/ranker_ablation.py's parts: variant parsing with clear errors, NDCG against all relevant
items (not only the retrieved ones), and the by-shopper split it shares with the ranker job."""

from __future__ import annotations

import numpy as np
import pytest

from bench.ranker_ablation import ndcg_full, parse_variant
from features.retrieval.feature_names import FEATURE_NAMES
from jobs.train_ranker import split_by_shopper


def test_variants_parse_to_zeroed_columns_lightgbm_params_or_retriever_settings():
    name, cols, params, retriever, members = parse_variant("without:item_age+history_max_sim")
    assert cols == [FEATURE_NAMES.index("item_age"), FEATURE_NAMES.index("history_max_sim")]
    assert params == {} and retriever == {}
    assert parse_variant('params:{"num_leaves": 31}')[1:] == ([], {"num_leaves": 31}, {}, 1)
    assert parse_variant('retriever:{"sequence_candidates": 200}')[1:] == ([], {}, {"sequence_candidates": 200}, 1)
    assert parse_variant("ensemble:5")[1:] == ([], {}, {}, 5)
    assert parse_variant("train:history") == ("train:history", [], {}, {}, 1)
    with pytest.raises(ValueError, match="train takes one of history"):
        parse_variant("train:guests")
    for bad in ("ensemble:1", "ensemble:x", "ensemble:"):
        with pytest.raises(ValueError, match="ensemble takes the number of models"):
            parse_variant(bad)
    with pytest.raises(ValueError, match=r"unknown retriever setting\(s\) \['sequence'\]; allowed: num_candidates"):
        parse_variant('retriever:{"sequence": 200}')
    with pytest.raises(ValueError, match=r"retriever:.*retriever.ease_candidates: -1; allowed: >= 0"):
        parse_variant('retriever:{"ease_candidates": -1}')
    with pytest.raises(ValueError, match="unknown feature.*'nope'.*allowed: query_sim"):
        parse_variant("without:nope")
    with pytest.raises(ValueError, match="JSON object"):
        parse_variant("params:{num_leaves: 31}")
    with pytest.raises(ValueError, match="allowed: without:.*retriever:<JSON object>"):
        parse_variant("drop:item_age")


def test_ndcg_counts_relevant_items_that_were_not_retrieved():
    # request 0: 3 relevant items, one retrieved, at rank 2; request 1: one relevant, ranked first;
    # request 2 has no rows here (NaN: not scored).
    g = np.array([0, 0, 0, 1, 1])
    y = np.array([0.0, 1.0, 0.0, 1.0, 0.0])
    scores = np.array([0.9, 0.5, 0.1, 0.2, 0.1])
    got = ndcg_full(scores, y, g, np.array([3, 1, 2]), 3)
    ideal3 = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert got[0] == pytest.approx((1 / np.log2(3)) / ideal3)
    assert got[1] == pytest.approx(1.0)
    assert np.isnan(got[2])


def test_split_by_shopper_keeps_each_shoppers_lists_on_one_side():
    users = [f"u{k % 40}" for k in range(120)]  # 3 lists per shopper
    g = np.repeat(np.arange(120), 5)
    y = np.zeros(len(g))
    y[::5] = 1.0
    y[g == 7] = 0.0  # a list without a positive is on neither side
    tr, va, valid_users, n = split_by_shopper(users, y, g, seed=3, valid_fraction=0.25)
    assert n == 40 and len(valid_users) == 10
    side = {}
    for rows, name in ((tr, "train"), (va, "valid")):
        for q in np.unique(g[rows]):
            assert side.setdefault(users[q], name) == name
    assert not (tr | va)[g == 7].any()
    again = split_by_shopper(users, y, g, seed=3, valid_fraction=0.25)
    assert (again[0] == tr).all() and again[2] == valid_users
    with pytest.raises(ValueError, match="too few request lists"):
        split_by_shopper(users, np.zeros(len(g)), g, seed=3, valid_fraction=0.25)


def test_the_command_refuses_a_folder_that_is_not_an_evaluation_run(tmp_path):
    from bench.ranker_ablation import main

    with pytest.raises(SystemExit, match="no metrics.json there"):
        main(["--run", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown feature"):
        main(["--run", str(tmp_path), "--variants", "without:nope"])
    (tmp_path / "metrics.json").write_text('{"config": {"events": null, "judgments": "j.csv"}}')
    with pytest.raises(SystemExit, match="search-only run"):
        main(["--run", str(tmp_path)])
