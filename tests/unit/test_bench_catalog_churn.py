"""bench.catalog_churn runs end to end on a small catalog and writes what it measured."""

from __future__ import annotations

import json

from bench import catalog_churn


def test_catalog_churn_bench_writes_every_state(tmp_path):
    out = tmp_path / "churn.json"
    assert catalog_churn.main(["--items", "1000", "--changes", "50", "--queries", "10", "--index", "flat",
                               "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert list(r["states"]) == ["fresh", "price_changes", "title_changes", "removals", "all_of_it"]
    assert r["states"]["price_changes"]["upserted"] == 0  # price-only writes keep the index's vectors
    assert r["states"]["removals"]["removed"] == 5 and r["states"]["title_changes"]["upserted"] == 5
    assert all(s["dense_recall@200"] == 1.0 for s in r["states"].values())  # flat: exact
    assert r["data"]["index"] == "flat" and r["command"].endswith("--out " + str(out))
    assert r["replica_start"]["log_records"] >= 50 and r["replica_start"]["with_log_s"] >= 0
