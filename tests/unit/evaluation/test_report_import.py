"""The report is self-contained HTML; the Crowdflower importer."""

from __future__ import annotations

import polars as pl
import pytest

from features.data import schema as S
from features.data.crowdflower import clean_text, import_crowdflower
from features.evaluation import report as R


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
