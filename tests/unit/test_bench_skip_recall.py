"""bench.skip_recall runs end to end on a small catalog and writes what it measured."""

from __future__ import annotations

import json

from bench import skip_recall


def test_skip_recall_bench_writes_both_modes_for_every_share(tmp_path):
    out = tmp_path / "skip.json"
    assert skip_recall.main(["--items", "2000", "--queries", "5", "--k", "20", "--kinds", "hnsw", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    rows = r["kinds"]["hnsw"]["rows"]
    assert [row["skipped_share"] for row in rows] == list(skip_recall.SHARES)
    assert all({"fixed", "widened"} <= set(row) for row in rows) and r["exact_live_rows"] > 0
    assert all(row["widened"]["recall"] == 1.0 for row in rows[1:])  # 2,000 rows: skipping any, the exact scan
