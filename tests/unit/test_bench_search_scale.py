"""bench/search_scale.py's synthetic judgments: the sizes asked for, whole queries, the source
item graded 3, fractional grades in the contract's range, seeded."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from bench.search_scale import synthetic
from features.data.judgments import read_judgments


def test_synthetic_judgments_have_the_asked_shape_and_read_back(tmp_path):
    vocab = np.array(["red", "mug", "lamp", "chair", "oak", "blue", "set", "glass"])
    p = np.full(len(vocab), 1 / len(vocab))
    items, judg = synthetic(200, 50, 6, vocab, p, seed=3)
    assert items.height == 200 and items["item_id"].n_unique() == 200
    assert 1 <= judg["query"].n_unique() <= 50
    assert judg.height <= 50 * 6  # at most --per-query judgments per draw (a query drawn twice merges)
    assert (judg.group_by("query").agg(pl.col("grade").max())["grade"] == 3.0).all()
    assert judg["grade"].is_between(1, 3).all() and (judg["grade"] % 1 != 0).any()
    assert set(judg["item_id"]) <= set(items["item_id"])
    again, judg2 = synthetic(200, 50, 6, vocab, p, seed=3)
    assert again.equals(items) and judg2.equals(judg)
    judg.write_parquet(tmp_path / "j.parquet")
    assert read_judgments(str(tmp_path / "j.parquet")).height == judg.height  # the job's own reader takes it
    with pytest.raises(ValueError, match="--items"):
        synthetic(5, 50, 6, vocab, p)
