"""The importer and the Ray Data feature job on the bundled data, against the local oracle."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from features import artifacts as A
from features.data import schema as S
from features.data.pipeline import SplitConfig, build_local
from features.data.transforms import FeatureParams
from features.data.validate import SchemaError, ValidationConfig
from features.profiles.profile import ProfileParams
from features.profiles.seed import PROFILE_SEED, with_seeds
from jobs import build_features, import_online_retail

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
VCFG = ValidationConfig(now="2012-01-01T00:00:00Z")


@pytest.fixture(scope="module")
def canonical(tmp_path_factory):
    out = tmp_path_factory.mktemp("canonical")
    report = import_online_retail.run(import_online_retail.ImportConfig(
        input=str(ROOT / "data/online_retail.parquet"), output=str(out)))
    return out, report


def _run(events: str, items: str, out: Path, **kw) -> dict:
    cfg = build_features.BuildFeaturesConfig(events=events, items=items, output_root=str(out), validation=VCFG, **kw)
    return build_features.run(cfg)


def _read(path: str) -> pl.DataFrame:
    return pl.read_parquet(f"{path}/**/*.parquet") if Path(path).is_dir() else pl.read_parquet(path)


def test_bundled_data_end_to_end_equals_single_process_oracle(ray_local, canonical, tmp_path):
    canon, report = canonical
    m = _run(str(canon / "events.parquet"), str(canon / "items.parquet"), tmp_path, num_partitions=3)
    x = m["metrics"]
    raw_rows = pq.ParquetFile(ROOT / "data/online_retail.parquet").metadata.num_rows
    assert raw_rows == 541_909
    assert raw_rows == x["events_valid"] + x["events_quarantined"] + sum(report["rejected"].values())
    assert x["events_in"] == report["events"] and x["items_valid"] == report["items"] == 3_940

    version_dir = Path(m["path"])
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["kind"] == "features" and manifest["inputs"]["events"]["sha256"]
    assert A.latest_complete(str(tmp_path), "features") == str(version_dir)

    oracle = build_local(pq.read_table(canon / "events.parquet"), pq.read_table(canon / "items.parquet"),
                         VCFG, FeatureParams(), SplitConfig())
    items = _read(m["outputs"]["items"])
    assert_frame_equal(items, oracle.items, check_exact=False, rel_tol=1e-9)
    users = _read(m["outputs"]["users"]).sort(S.USER_ID)
    assert users.height == x["users"] == oracle.users.height
    assert_frame_equal(users.drop(PROFILE_SEED), oracle.users, check_exact=False, rel_tol=1e-9)
    # each user's seed profile: the fold of all their events, as the Profiles deployment folds them
    assert x["events_quarantined"] == 0
    seeds = with_seeds(oracle.users, pl.read_parquet(canon / "events.parquet"),
                       pl.read_parquet(canon / "items.parquet"), ProfileParams(), oracle.as_of)
    assert users.get_column(PROFILE_SEED).to_list() == seeds.get_column(PROFILE_SEED).to_list()
    assert users.get_column(PROFILE_SEED).null_count() == 0
    cooc = _read(m["outputs"]["cooccurrence"]).sort(S.ITEM_A, S.RANK)
    assert_frame_equal(cooc, oracle.cooccurrence.sort(S.ITEM_A, S.RANK), check_exact=False, rel_tol=1e-9)
    ease = _read(m["outputs"]["ease"]).sort(S.ITEM_A, S.RANK)
    assert_frame_equal(ease, oracle.ease.sort(S.ITEM_A, S.RANK), check_exact=False, rel_tol=1e-6)
    assert x["ease"]["lambda_chosen_by"] == "leave-newest-out holdout" and x["ease"]["items"] > 3_000
    als = _read(m["outputs"]["als"]).sort(S.ITEM_ID)  # implicit's ALS, seeded: the same factors on any threads
    assert_frame_equal(als, oracle.als.sort(S.ITEM_ID), check_exact=False, rel_tol=1e-5, abs_tol=1e-6)
    assert x["als"]["fitted"] and x["als"]["items"] == als.height > 3_000
    key = [S.EXAMPLE_KIND, S.EVENT_ID]
    examples = pl.concat([_read(m["outputs"][f"examples_{s.value}"]) for s in S.Split]).sort(key)
    assert_frame_equal(examples, oracle.examples.sort(key))
    for s in S.Split:
        part = _read(m["outputs"][f"examples_{s.value}"])
        assert set(part.get_column(S.SPLIT)) == {s.value}
    # The last month is the test split; the encoder has plenty to train on.
    assert x["examples"]["train/history"] > 150_000 and x["examples"]["test/history"] > 40_000


def test_dirty_input_is_quarantined_not_lost(ray_local, canonical, tmp_path):
    canon, _ = canonical
    clean = pl.read_parquet(canon / "events.parquet").head(3_000)
    iso = pl.col(S.TS).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    schema = clean.with_columns(iso).schema
    base = clean.with_columns(iso).row(0, named=True)
    overrides = [
        {S.EVENT_ID: "bad-type", S.EVENT_TYPE: "wishlist"},
        {S.EVENT_ID: "bad-item", S.ITEM_ID: "NOT-IN-CATALOG"},
        {S.EVENT_ID: "bad-user", S.USER_ID: None},
        {S.EVENT_ID: "bad-price", S.PRICE: -5.0},
        {S.EVENT_ID: "bad-qty", S.QUANTITY: 0},
        {S.EVENT_ID: "bad-future", S.TS: "2031-01-01T00:00:00Z"},
        {S.EVENT_ID: "bad-ts", S.TS: "not a time"},
        {S.EVENT_ID: "bad-search", S.EVENT_TYPE: "search", S.ITEM_ID: None, S.QUERY: None},
    ]
    dirty = pl.DataFrame([{**base, **o} for o in overrides], schema=schema)
    dups = clean.head(4).with_columns(iso)  # the same ids again
    d = tmp_path / "events"
    d.mkdir()
    clean.with_columns(iso).write_parquet(d / "part-0.parquet")  # ts as ISO strings in both files
    pl.concat([dirty, dups]).write_parquet(d / "part-1.parquet")
    m = _run(str(d), str(canon / "items.parquet"), tmp_path / "out")
    x = m["metrics"]
    assert x["events_in"] == 3_000 + len(overrides) + 4
    assert x["events_valid"] == 3_000
    assert x["events_quarantined_by_reason"] == {
        "duplicate_event_id": 4, "unknown_event_type": 1, "unknown_item": 1, "null_user_id": 1,
        "negative_price": 1, "non_positive_quantity": 1, "future_ts": 1, "unparseable_ts": 1,
        "search_without_query": 1}
    q = _read(m["outputs"]["quarantine_events"])
    assert q.height == x["events_quarantined"] and {S.REASON, S.RAW} <= set(q.columns)
    assert json.loads(q.filter(pl.col(S.EVENT_ID) == "bad-ts").get_column(S.RAW).item())[S.TS] == "not a time"


def test_schema_violations_fail_with_file_and_column(ray_local, canonical, tmp_path):
    canon, _ = canonical
    d = tmp_path / "events"
    d.mkdir()
    pl.read_parquet(canon / "events.parquet").head(10).write_parquet(d / "ok.parquet")
    pl.read_parquet(canon / "events.parquet").head(10).drop(S.EVENT_TYPE).write_parquet(d / "broken.parquet")
    with pytest.raises(SchemaError, match=r"broken\.parquet: required column\(s\) 'event_type' missing"):
        _run(str(d), str(canon / "items.parquet"), tmp_path / "out")
    pl.read_parquet(canon / "events.parquet").head(10).with_columns(pl.col(S.TS).cast(pl.String)).write_parquet(
        d / "broken.parquet")
    with pytest.raises(SchemaError, match=r"column 'ts' is large_string in .*broken\.parquet but timestamp.* in .*ok\.parquet"):
        _run(str(d), str(canon / "items.parquet"), tmp_path / "out")
    (d / "broken.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(SchemaError, match=r"broken\.parquet: not a readable Parquet file"):
        _run(str(d), str(canon / "items.parquet"), tmp_path / "out")
    assert A.latest_complete(str(tmp_path / "out"), "features") is None, "a failed run leaves no complete version"
    code = build_features.main(["--set", f"events={d}", "--set", f"items={canon / 'items.parquet'}",
                                "--set", f"output_root={tmp_path / 'out'}"])
    assert code == 2


def test_a_log_whose_items_match_no_catalog_id_says_so(ray_local, canonical, tmp_path):
    """Every event quarantined (here: the catalog's ids carry a prefix the log's lack) stops the job
    naming the reasons and one id from each side, not only 'no valid events'."""
    canon, _ = canonical
    pl.read_parquet(canon / "events.parquet").head(50).write_parquet(tmp_path / "events.parquet")
    items = pl.read_parquet(canon / "items.parquet").with_columns(("SKU-" + pl.col(S.ITEM_ID)).alias(S.ITEM_ID))
    items.write_parquet(tmp_path / "items.parquet")
    with pytest.raises(ValueError, match=r"quarantine reasons: \{'unknown_item': 50\}\); the events' item_id values "
                                         r"match none of the catalog's \(an event names '.+', the catalog has e\.g\. 'SKU-"):
        _run(str(tmp_path / "events.parquet"), str(tmp_path / "items.parquet"), tmp_path / "out")
