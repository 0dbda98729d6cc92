"""bench.import_formats: one log as Parquet, CSV, an Excel workbook, tracker JSON lines, a relational
export, two event files and a long catalog imports to the same events (a small run; the bench runs
the whole bundled log)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import import_formats
from jobs import import_events as IE

ROOT = Path(__file__).resolve().parents[2]


def test_every_format_imports_the_same_events(tmp_path):
    IE.run(IE.ImportEventsConfig(mapping="uci-online-retail", events=str(ROOT / "data" / "online_retail.parquet"),
                                 output=str(tmp_path / "canonical")))
    out = tmp_path / "r.json"
    assert import_formats.main(["--rows", "400", "--source", str(tmp_path / "canonical"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["formats"]) == {"parquet", "csv", "xlsx", "jsonl", "relational", "two_files", "long_items"}
    assert all(f["same_as_parquet"] and f["events"] == 400 for f in r["formats"].values())
