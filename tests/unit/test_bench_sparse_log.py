"""bench.sparse_log: the synthetic sparse log is canonical, passes the import's validation whole,
and is the same for the same arguments (its timings are reproduced from the command alone)."""

from __future__ import annotations

import polars as pl
import pytest

from bench import sparse_log
from features.data.validate import ValidationConfig, validate_events, validate_items


def test_the_log_is_valid_canonical_data_and_the_same_every_time(tmp_path):
    assert sparse_log.main(["--shoppers", "300", "--items", "500", "--out", str(tmp_path)]) == 0
    events, items = pl.read_parquet(tmp_path / "events.parquet"), pl.read_parquet(tmp_path / "items.parquet")
    again, _ = sparse_log.sparse_log(300, 500)
    assert events.equals(again) and events.height > 300 and items.height == 500
    good_items, bad_items = validate_items(items.to_arrow(), ValidationConfig())
    good, bad = validate_events(events.to_arrow(), good_items["item_id"], ValidationConfig(now="2030-01-01T00:00:00Z"))
    assert bad.height == 0 and bad_items.height == 0 and good.height == events.height
    assert set(good["event_type"]) == {"purchase"} and events["ts"].max() < sparse_log.START.replace(year=2022, month=2)


def test_too_few_items_for_the_topics_is_refused():
    with pytest.raises(SystemExit):
        sparse_log.main(["--items", "50"])
