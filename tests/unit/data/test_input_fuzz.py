"""Fuzzing the jobs' Parquet input: corrupted files get a clear error naming the file (and the
column), corrupted rows are quarantined with a reason and their original values, and no row is
ever lost: valid + quarantined == read, for thousands of generated rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.data import schema as S
from features.data.pipeline import SplitConfig, build_local
from features.data.transforms import FeatureParams
from features.data.validate import SchemaError, ValidationConfig, split_duplicates, validate_events, validate_items
from jobs.build_features import check_inputs

VCFG = ValidationConfig(now="2012-01-01T00:00:00Z")
ITEMS = pa.table({S.ITEM_ID: ["a", "b", "c", "d"], S.TITLE: ["red mug", "blue bag", "lamp", "box"],
                  S.PRICE: [1.0, 2.0, 3.0, 4.0]})
REASONS = {r.value for r in S.Reason}

POOLS = {
    S.EVENT_ID: ["e1", "e2", "e3", None, "", "  ", "dup", "dup", "ü" * 300, "e\x00x"],
    S.TS: ["2011-06-01T10:00:00Z", "2011-06-01 10:00:00", "2011-13-45T00:00:00Z", "", None, "yesterday",
           "2099-01-01T00:00:00Z", "1970-01-01", "2011-06-01T10:00:00+05:00", "NaN"],
    S.USER_ID: ["u1", "u2", None, "", "   ", "😀" * 50, "u\nnewline"],
    S.EVENT_TYPE: [*S.EVENT_TYPES, "purchased", None, "", "VIEW", "view "],
    S.ITEM_ID: ["a", "b", "c", "d", "nope", None, ""],
    S.QUERY: [None, "", "red mug", "\x00\x01", "x" * 5000, "<script>alert(1)</script>"],
    S.QUANTITY: [1, 2, 0, -3, 10**9, None, 2**40],
    S.PRICE: [1.5, 0.0, -1.0, float("nan"), float("inf"), 1e12, None],
}
TYPES = {S.EVENT_ID: pa.string(), S.TS: pa.string(), S.USER_ID: pa.string(), S.EVENT_TYPE: pa.string(),
         S.ITEM_ID: pa.string(), S.QUERY: pa.string(), S.QUANTITY: pa.int64(), S.PRICE: pa.float64()}


def _junk(seed: int, n: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols = {}
    for name, pool in POOLS.items():
        picks = rng.integers(0, len(pool), n)
        cols[name] = pa.array([pool[i] for i in picks], TYPES[name])
    cols[S.EVENT_ID] = pa.array([v if v != "e1" else f"e1-{k}" for k, v in enumerate(cols[S.EVENT_ID].to_pylist())])
    return pa.table(cols)


@pytest.mark.parametrize("seed", range(5))
def test_junk_rows_are_quarantined_with_a_reason_and_nothing_is_lost(seed):
    raw = _junk(seed, 2000)
    items, _ = validate_items(ITEMS, VCFG)
    ok, bad = validate_events(raw, items.get_column(S.ITEM_ID), VCFG)
    kept, dups = split_duplicates(ok)
    assert ok.height + bad.height == raw.num_rows  # nothing lost
    assert kept.height + dups.height == ok.height
    assert set(bad[S.REASON]) <= REASONS and bad[S.REASON].null_count() == 0
    # the quarantine keeps each row's original values as JSON, even those that could not be typed:
    # the event ids of kept + duplicate + quarantined rows are exactly the input's, as a multiset
    from collections import Counter

    quarantined = [json.loads(t)[S.EVENT_ID] for t in bad[S.RAW].to_list()]
    assert all(set(json.loads(t)) == set(raw.column_names) for t in bad[S.RAW].to_list())
    assert Counter(kept[S.EVENT_ID].to_list() + dups[S.EVENT_ID].to_list() + quarantined) == Counter(
        raw.column(S.EVENT_ID).to_pylist())
    # every kept row meets the contract
    assert kept[S.EVENT_ID].null_count() == 0 and (kept[S.EVENT_ID].str.strip_chars() != "").all()
    assert kept[S.USER_ID].null_count() == 0 and set(kept[S.EVENT_TYPE]) <= set(S.EVENT_TYPES)
    assert kept[S.TS].null_count() == 0
    assert kept.is_empty() or str(kept[S.TS].max()) < "2012-01-01 00:05"  # no future timestamps
    prices = [p for p in kept[S.PRICE].to_list() if p is not None]
    assert all(math.isfinite(p) and 0 <= p <= VCFG.max_price for p in prices)
    qty = [q for q in kept[S.QUANTITY].to_list() if q is not None]
    assert all(0 < q <= VCFG.max_quantity for q in qty)
    assert kept[S.EVENT_ID].is_unique().all() and kept.height > 0


def test_the_whole_local_build_accounts_for_every_junk_row():
    raw = pa.concat_tables([_junk(s, 1000) for s in range(3)])
    good = pa.table({S.EVENT_ID: [f"g{i}" for i in range(300)],
                     S.TS: [f"2011-06-{1 + i % 28:02d}T10:00:00Z" for i in range(300)],
                     S.USER_ID: [f"u{i % 7}" for i in range(300)], S.EVENT_TYPE: ["purchase"] * 300,
                     S.ITEM_ID: [["a", "b", "c", "d"][i % 4] for i in range(300)]})
    raw = pa.concat_tables([raw, good], promote_options="default")
    out = build_local(raw, ITEMS, VCFG, FeatureParams(), SplitConfig(valid_days=5, test_days=5))
    assert out.counts["events_valid"] + out.events_quarantine.height == raw.num_rows
    assert out.counts["events_valid"] >= 300


def _write(path, table: pa.Table) -> str:
    pq.write_table(table, path)
    return str(path)


def test_corrupted_files_get_an_error_naming_the_file_and_column(tmp_path):
    good = _write(tmp_path / "good.parquet", _junk(0, 50))
    data = (tmp_path / "good.parquet").read_bytes()
    cases = {
        "random.parquet": np.random.default_rng(0).bytes(4096),
        "truncated.parquet": data[: len(data) // 2],
        "empty.parquet": b"",
        "header-only.parquet": data[:4],
    }
    for name, blob in cases.items():
        d = tmp_path / name.replace(".parquet", "")
        d.mkdir()
        (d / name).write_bytes(blob)
        with pytest.raises(SchemaError, match=rf"events file .*{name}: not a readable Parquet file"):
            check_inputs(str(d), S.EVENTS_SCHEMA, S.EVENTS_REQUIRED, "events")
    missing = _write(tmp_path / "missing.parquet", _junk(0, 5).drop_columns([S.USER_ID]))
    with pytest.raises(SchemaError, match="required column\\(s\\) 'user_id' missing"):
        check_inputs(missing, S.EVENTS_SCHEMA, S.EVENTS_REQUIRED, "events")
    wrong = _write(tmp_path / "wrong.parquet", _junk(0, 5).set_column(1, S.TS, pa.array([1.5] * 5)))
    with pytest.raises(SchemaError, match="column 'ts' has type double; allowed: timestamp"):
        check_inputs(wrong, S.EVENTS_SCHEMA, S.EVENTS_REQUIRED, "events")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _write(mixed / "a.parquet", _junk(0, 5))
    _write(mixed / "b.parquet", _junk(0, 5).set_column(7, S.PRICE, pa.array([1] * 5, pa.int64())))
    with pytest.raises(SchemaError, match="column 'price' is double in .*a.parquet but int64 in .*b.parquet"):
        check_inputs(str(mixed), S.EVENTS_SCHEMA, S.EVENTS_REQUIRED, "events")
    extra = _write(tmp_path / "extra.parquet", _junk(0, 5).append_column("utm_source", pa.array(["x"] * 5)))
    assert check_inputs(extra, S.EVENTS_SCHEMA, S.EVENTS_REQUIRED, "events") == ["utm_source"]
    assert check_inputs(good, S.EVENTS_SCHEMA, S.EVENTS_REQUIRED, "events") == []


def test_the_feature_summary_warns_when_many_events_are_quarantined():
    from jobs.build_features import summary

    x = {"events_in": 100, "events_valid": 30, "events_quarantined": 70,
         "events_quarantined_by_reason": {"unknown_item": 60, "future_ts": 10}, "items_in": 5, "items_valid": 5,
         "items_quarantined_by_reason": {}, "users": 3, "cooccurrence_pairs": 0, "valid_start": "a", "test_start": "b",
         "as_of": "c", "examples": {}, "seconds": 1.0, "num_partitions": 2}
    text = summary({"version": "v", "path": "p", "metrics": x})
    assert "WARNING: 70% of the events were quarantined, most for unknown_item" in text
    few = summary({"version": "v", "path": "p", "metrics": {**x, "events_valid": 90, "events_quarantined": 10,
                                                          "events_quarantined_by_reason": {"future_ts": 10}}})
    assert "WARNING" not in few
