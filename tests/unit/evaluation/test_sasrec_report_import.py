"""SASRec learns a sequential pattern; the report is self-contained HTML; the Crowdflower importer."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from features.data import schema as S
from features.data.crowdflower import clean_text, import_crowdflower
from features.evaluation import report as R
from features.evaluation import sasrec as SR


def test_sasrec_learns_a_cycle_and_windows_cover_long_sequences():
    # Every user walks the cycle 0 -> 1 -> ... -> 7 -> 0 from a random start: the next item is
    # determined by the last one, which popularity (uniform here) cannot know.
    rng = np.random.default_rng(0)
    seqs = {f"u{n}": [int((s + t) % 8) for t in range(12)] for n, s in enumerate(rng.integers(0, 8, 60))}
    x, y = SR._windows([list(range(30))], 10)
    # ids are rows + 1 (0 pads): the last window holds rows 19..28 and targets rows 20..29
    assert x.shape == (3, 10) and x[0].tolist() == list(range(20, 30)) and y[0].tolist() == list(range(21, 31))
    model, info = SR.train(seqs, 8, SR.SASRecParams(dim=16, heads=2, layers=1, max_len=10, epochs=60, lr=5e-3,
                                                     dropout=0.0, max_time_s=60), log=None)
    hits = sum(int(np.argmax(SR.scores(model, [(s + t) % 8 for t in range(5)])) == (s + 5) % 8) for s in range(8))
    assert hits == 8, info
    assert SR.scores(model, []).tolist() == [0.0] * 8


def test_sasrec_sequences_follow_time_and_collapse_repeats():
    t = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    ev = pl.DataFrame({S.EVENT_ID: ["e1", "e2", "e3", "e4", "e5"], S.USER_ID: ["u"] * 5,
                       S.TS: [t + dt.timedelta(hours=h) for h in (3, 1, 2, 2, 4)],
                       S.EVENT_TYPE: ["purchase", "view", "view", "view", "return"],
                       S.ITEM_ID: ["b", "a", "c", "c", "a"]})
    assert SR.sequences(ev, {"a": 0, "b": 1, "c": 2}) == {"u": [0, 2, 1]}  # the return is not positive


def test_report_is_one_self_contained_page():
    m = {"method": "popularity", "ndcg@10": 0.1, "hit_rate@10": 0.2, "recall@10": 0.15, "mrr": 0.1,
         "precision@10": 0.02, "f1@10": 0.03, "coverage@10": 0.01, "diversity@10": 0.5, "novelty@10": 3.0,
         "latency_ms": {"p50": 0.1, "p95": 0.2, "p99": 0.3}}
    page = R.render({"run": "r1", "summary": "s <b>", "recommend": {
        "dataset": "d", "split": "leave-last", "ks": [10], "requests": 5, "dropped": 1, "catalog_items": 9,
        "methods": [m, {**m, "method": "system <x>"}], "in_session": {"requests": 3, "methods": [m]}}})
    assert page.startswith("<!doctype html>") and page.count("<svg") >= 5
    assert "<script" not in page and "http" not in page.split("<pre>")[0]  # nothing loads from anywhere
    assert "system &lt;x&gt;" in page and "s &lt;b&gt;" in page  # names are escaped


def test_crowdflower_import_strips_html_dedupes_products_and_checks_grades():
    raw = pl.DataFrame({"query": ["red mug", "mug", "mug"],
                        "product_title": ["Red Mug", "Red Mug", "Blue <b>Mug</b>"],
                        "product_description": ["<p>A red&amp;white mug</p>", "<p>A red&amp;white mug</p>", None],
                        "median_relevance": [4.0, 3.0, 2.0]})
    items, judg = import_crowdflower(raw)
    assert items.height == 2 and items[S.DESCRIPTION][0] == "A red&white mug" and items[S.TITLE][1] == "Blue Mug"
    assert judg.height == 3 and judg["item_id"][0] == judg["item_id"][1]  # one product judged for two queries
    assert clean_text("  <br/> ") is None
    with pytest.raises(ValueError, match="median_relevance must be in 1..4"):
        import_crowdflower(raw.with_columns(pl.lit(7.0).alias("median_relevance")))
    with pytest.raises(ValueError, match="missing column"):
        import_crowdflower(raw.drop("query"))
