"""bench.filter_cost: each filter kind is chosen from the catalog and measured against the same
searches unfiltered (a small run over a small catalog)."""

from __future__ import annotations

import json

import polars as pl

from bench import filter_cost
from features import artifacts as A
from features.data import schema as S
from tests.helpers import small_catalog


def test_every_filter_kind_is_measured_against_the_unfiltered_search(tmp_path):
    cat, index = small_catalog(60)
    features_dir = tmp_path / "features" / "v1"
    (features_dir / "items").mkdir(parents=True)
    pl.DataFrame({S.ITEM_ID: cat.item_ids, S.TITLE: cat.title, S.ITEM_TEXT: cat.text, S.CATEGORY: cat.category,
                  S.PRICE: cat.price, S.IN_STOCK: cat.in_stock}).write_parquet(features_dir / "items" / "items.parquet")
    A.write_manifest(str(features_dir), A.manifest("features", "v1", {}, {}, {}, {}))
    index.save(tmp_path / "index" / "v1")
    A.write_manifest(str(tmp_path / "index" / "v1"), A.manifest("index", "v1", {}, {"features": {"path": str(features_dir)}}, {}, {}))
    out = tmp_path / "r.json"
    assert filter_cost.main(["--artifacts", str(tmp_path), "--queries", "5", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["settings"]
    assert list(rows)[:3] == ["no filter", "in stock", "price at most the median"] and len(rows) == 5
    assert rows["no filter"]["items_passing"] == 60 and rows["in stock"]["items_passing"] == 48
    assert rows["category path 'Home > Kitchen'"]["items_passing"] == 20
    assert all(r["requests"] == 5 and r["p50_ms"] > 0 for r in rows.values())
