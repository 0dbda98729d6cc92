"""Importing nested exports: JSON lines from an event tracker (objects, an order's list of products)
and warehouse Parquet with structs and lists."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.data import schema as S
from features.data.reading import read_table
from features.data.validate import SchemaError
from jobs import import_events as IE

# A tracker's log in the shape of Segment's e-commerce spec: a view names one product, an order
# lists its products; records leave out what they do not have.
RECORDS = [
    {"messageId": "m1", "timestamp": "2024-03-01T10:00:00Z", "userId": "u1", "event": "Product Viewed",
     "context": {"sessionId": "s1"}, "properties": {"product_id": "00123", "price": 4.5}},
    {"messageId": "m2", "timestamp": "2024-03-01T10:05:00+01:00", "userId": "u1", "event": "Order Completed",
     "context": {"sessionId": "s1"}, "properties": {"order_id": "o1", "products": [
         {"product_id": "00123", "quantity": 2, "price": 4.5}, {"product_id": 777, "quantity": 1}]}},
    {"messageId": "m3", "timestamp": "2024-03-01T11:00:00Z", "userId": 42, "event": "Order Completed",
     "properties": {"order_id": "o2", "products": []}},  # an empty order: kept, the feature job judges it
    {"messageId": "m4", "timestamp": "2024-03-01T12:00:00Z", "userId": "u2", "event": "Products Searched",
     "properties": {"query": "red mug"}},
    {"messageId": "m5", "timestamp": "yesterday", "userId": "u2", "event": "Product Viewed",
     "properties": {"product_id": "777"}},
]
ITEMS = [{"sku": "00123", "name": "Red mug", "in_stock": True, "price": 4.5},
         {"sku": 777, "name": "Blue lamp", "in_stock": False}]
MAPPING = """events:
  path: {events}
  explode: properties.products
  columns: {event_id: messageId, ts: timestamp, user_id: userId, session_id: context.sessionId, event_type: event,
            query: properties.query, item_id: [properties.products.product_id, properties.product_id],
            quantity: [properties.products.quantity, properties.quantity],
            price: [properties.products.price, properties.price]}
  values: {event_type: {"Order Completed": purchase, "Product Viewed": view, "Products Searched": search}}
items:
  path: items.jsonl
  columns: {item_id: sku, title: name, in_stock: in_stock, price: price}
"""


def _lines(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _import(tmp_path, events: str = "events.jsonl", mapping: str = MAPPING, chunk_rows: int = 1_000_000, out="out"):
    (tmp_path / "items.jsonl").write_text(_lines(ITEMS))
    (tmp_path / "m.yaml").write_text(mapping.replace("{events}", events))
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / out), chunk_rows=chunk_rows))
    return r, pl.read_parquet(tmp_path / out / "events.parquet"), pl.read_parquet(tmp_path / out / "items.parquet"), \
        pl.read_parquet(tmp_path / out / "rejected.parquet")


def test_a_trackers_json_lines_become_one_event_per_product_and_nothing_is_lost(tmp_path):
    (tmp_path / "events.jsonl").write_text(_lines(RECORDS))
    r, events, items, rejected = _import(tmp_path)
    # 5 records, one order of two products: 6 rows, each an event or a rejected row with its reason.
    assert r["raw_rows"]["events"] == 6 == events.height + rejected.height
    assert rejected[S.REASON].to_list() == ["unparseable_ts"] and json.loads(rejected[S.RAW][0])["messageId"] == "m5"
    by_id = {row[S.EVENT_ID]: row for row in events.iter_rows(named=True)}
    assert sorted(by_id) == ["m1", "m2:0", "m2:1", "m3", "m4"]  # an order's products keep distinct ids
    assert by_id["m1"][S.ITEM_ID] == "00123" and by_id["m1"][S.EVENT_TYPE] == "view"  # the view's own product
    assert by_id["m1"][S.PRICE] == 4.5 and by_id["m1"][S.SESSION_ID] == "s1"
    assert (by_id["m2:0"][S.ITEM_ID], by_id["m2:0"][S.QUANTITY]) == ("00123", 2)  # the order's products
    assert (by_id["m2:1"][S.ITEM_ID], by_id["m2:1"][S.QUANTITY], by_id["m2:1"][S.PRICE]) == ("777", 1, None)
    assert str(by_id["m2:0"][S.TS]) == "2024-03-01 09:05:00+00:00"  # the offset, in UTC
    assert by_id["m3"][S.ITEM_ID] is None and by_id["m3"][S.USER_ID] == "42"  # a number as JSON wrote it
    assert by_id["m4"][S.QUERY] == "red mug" and by_id["m4"][S.SESSION_ID] is None  # fields left out are blank
    assert items.sort(S.ITEM_ID).select(S.ITEM_ID, S.IN_STOCK).rows() == [("00123", True), ("777", False)]
    # One of two columns for quantity is in no record: imported from the other, and said.
    assert ("WARNING: mapping.events.columns.quantity: 'properties.quantity' in no record of "
            f"{tmp_path}/events.jsonl; the field came from 'properties.products.quantity'") in r["warnings"]


def test_gzipped_chunked_and_array_files_import_the_same(tmp_path):
    (tmp_path / "events.jsonl").write_text(_lines(RECORDS))
    _, whole, _, _ = _import(tmp_path)
    (tmp_path / "events.jsonl.gz").write_bytes(gzip.compress(("\ufeff" + _lines(RECORDS) + "\n\n").encode()))
    _, gz, _, _ = _import(tmp_path, "events.jsonl.gz", chunk_rows=2, out="gz")  # BOM, blank lines, 3 chunks
    (tmp_path / "events.json").write_text(json.dumps(RECORDS, indent=2))  # one array, pretty-printed
    _, arr, _, _ = _import(tmp_path, "events.json", out="arr")
    assert gz.equals(whole) and arr.equals(whole)


def test_a_field_that_changes_shape_between_records_is_still_read_as_written(tmp_path):
    # `properties` is an object on one line and a number on the next: a columnar reader cannot
    # type that, the line-by-line reader takes over with the same columns.
    rows = [{"id": 1, "properties": {"sku": "A"}, "big": 18446744073709551615, "ok": True},
            {"id": "00123", "properties": 5, "l": [1, 2]}]
    (tmp_path / "x.jsonl").write_text(_lines(rows))
    t = pl.from_arrow(read_table(str(tmp_path / "x.jsonl")))
    assert set(t.columns) == {"id", "properties.sku", "properties", "big", "ok", "l"}
    assert t.schema["id"] == pl.String and t["id"].to_list() == ["1", "00123"]
    assert t["big"][0] == "18446744073709551615" and t["ok"][0] == "true" and t["l"][1] == "[1, 2]"
    assert t["properties.sku"].to_list() == ["A", None] and t["properties"].to_list() == [None, "5"]


def test_warehouse_parquet_with_structs_and_a_list_of_items(tmp_path):
    t = pa.table({"event_id": ["e1", "e2", "e3"], "event_timestamp": [1709287200000000, 1709287300000000, 1709287400000000],
                  "user": [{"id": "u1"}, {"id": "u1"}, {"id": "u2"}], "event_name": ["purchase", "view_item", "purchase"],
                  "items": [[{"item_id": "A", "quantity": 2}, {"item_id": "B", "quantity": 1}],
                            [{"item_id": "A", "quantity": None}], None]})
    pq.write_table(t, tmp_path / "ga.parquet")
    mapping = """events:
  path: ga.parquet
  explode: items
  columns: {event_id: event_id, ts: event_timestamp, user_id: user.id, event_type: event_name, item_id: items.item_id,
            quantity: items.quantity}
  values: {event_type: {view_item: view}}
  ts_unit: us
items:
  path: items.jsonl
  columns: {item_id: sku, title: name}
"""
    r, events, _, rejected = _import(tmp_path, mapping=mapping)
    assert r["raw_rows"]["events"] == 4 == events.height and rejected.height == 0
    assert events.select(S.EVENT_ID, S.USER_ID, S.ITEM_ID, S.QUANTITY).rows() == [
        ("e1:0", "u1", "A", 2), ("e1:1", "u1", "B", 1), ("e2:0", "u1", "A", None), ("e3", "u2", None, None)]
    assert str(events[S.TS][0]) == "2024-03-01 10:00:00+00:00"


def test_nested_export_errors_name_the_field_the_file_and_the_choices(tmp_path):
    (tmp_path / "events.jsonl").write_text(_lines(RECORDS))
    with pytest.raises(SchemaError, match=r"mapping.events.columns.query: 'properties.qeury' is in no record or "
                                          r"column of .*events.jsonl; it has: .*properties.query"):
        _import(tmp_path, mapping=MAPPING.replace("properties.query", "properties.qeury"))
    (tmp_path / "bad.jsonl").write_text(_lines(RECORDS[:2]) + '{"messageId": "m3", \n')
    with pytest.raises(SchemaError, match=r"bad.jsonl, record 3 of this chunk: not JSON"):
        _import(tmp_path, "bad.jsonl")
    (tmp_path / "events.dat").write_text(_lines(RECORDS))  # a name that says nothing: read by its first bytes
    assert _import(tmp_path, "events.dat", out="dat")[1].equals(_import(tmp_path, out="jsonl")[1])
    (tmp_path / "events.parquet").write_text(_lines(RECORDS))
    with pytest.raises(SchemaError, match=r"events.parquet: not a Parquet file .* .jsonl .ndjson .json .*format: "
                                          r"parquet, csv, tsv, json, excel, recbole"):
        _import(tmp_path, "events.parquet")
    (tmp_path / "events.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SchemaError, match=r"explode: 'properties.products'; only JSON and Parquet files hold lists"):
        _import(tmp_path, "events.csv")
    pq.write_table(pa.table({"id": ["a"], "items": [1]}), tmp_path / "flat.parquet")
    with pytest.raises(SchemaError, match=r"explode: column 'items' of .*flat.parquet is Int64, not a list"):
        read_table(str(tmp_path / "flat.parquet"), explode="items")


GA4_MAPPING = """events:
  path: {events}
  explode: items
  key_values: event_params
  columns: {ts: event_timestamp, user_id: user_pseudo_id, session_id: event_params.ga_session_id,
            event_type: event_name, item_id: items.item_id, quantity: items.quantity, price: items.price,
            query: event_params.search_term}
  values: {event_type: {view_item: view, view_search_results: search, select_item: click}}
  ts_unit: us
items:
  columns: {item_id: items.item_id, title: items.item_name, brand: items.item_brand, category: items.item_category}
"""


def ga4_records():
    def params(**kv):
        return [{"key": k, "value": {"string_value": v if isinstance(v, str) else None,
                                     "int_value": v if isinstance(v, int) else None, "double_value": None}}
                for k, v in kv.items()]
    item = {"item_id": "SKU-1", "item_name": "Red mug", "item_brand": "Acme", "item_category": "Kitchen",
            "price": 4.5, "quantity": None}
    return [
        {"event_timestamp": 1709287200000000, "event_name": "view_search_results", "user_pseudo_id": "111.222",
         "event_params": params(ga_session_id=1709287, search_term="red mug", page_title="Search"), "items": []},
        {"event_timestamp": 1709287260000000, "event_name": "view_item", "user_pseudo_id": "111.222",
         "event_params": params(ga_session_id=1709287), "items": [item]},
        {"event_timestamp": 1709287320000000, "event_name": "purchase", "user_pseudo_id": "111.222",
         "event_params": params(ga_session_id=1709287, transaction_id="T1"),
         "items": [item | {"quantity": 2}, {**item, "item_id": "SKU-2", "item_name": "Blue lamp", "quantity": 1,
                                             "price": 20.0}]},
    ]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "jsonl-fallback"])
def test_a_google_analytics_4_export_maps_params_and_items(tmp_path, fmt):
    """GA4's BigQuery export: the search term and session id live in event_params (key/value pairs,
    typed value slots), products in items; as Parquet or JSON lines (and JSON whose shapes force
    the line-by-line reader), the same events and catalog."""
    recs = ga4_records()
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(recs), tmp_path / "ga4.parquet")
        name = "ga4.parquet"
    else:
        if fmt == "jsonl-fallback":  # a record whose items field is an object makes the columnar reader give up
            recs = recs + [{"event_timestamp": 1709287400000000, "event_name": "page_view", "user_pseudo_id": "9",
                            "event_params": [], "items": {"odd": 1}}]
        (tmp_path / "ga4.jsonl").write_text(_lines(recs))
        name = "ga4.jsonl"
    (tmp_path / "m.yaml").write_text(GA4_MAPPING.replace("{events}", name))
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    events = pl.read_parquet(tmp_path / "out" / "events.parquet").head(4)
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert events.select(S.EVENT_TYPE, S.SESSION_ID, S.QUERY, S.ITEM_ID, S.QUANTITY).rows() == [
        ("search", "1709287", "red mug", None, None), ("view", "1709287", None, "SKU-1", None),
        ("purchase", "1709287", None, "SKU-1", 2), ("purchase", "1709287", None, "SKU-2", 1)]
    assert str(events[S.TS][0]) == "2024-03-01 10:00:00+00:00" and events[S.USER_ID].unique().to_list() == ["111.222"]
    assert items.select(S.ITEM_ID, S.TITLE, S.BRAND, S.CATEGORY).sort(S.ITEM_ID).rows() == [
        ("SKU-1", "Red mug", "Acme", "Kitchen"), ("SKU-2", "Blue lamp", "Acme", "Kitchen")]


def test_large_json_records_are_read_in_chunks_of_bounded_size(tmp_path, monkeypatch):
    from features.data import reading

    monkeypatch.setattr(reading, "JSON_CHUNK_BYTES", 1000)  # GA4-sized records, scaled down
    (tmp_path / "big.jsonl").write_text(_lines({"id": f"{i:03d}", "pad": "x" * 300} for i in range(20)))
    tables = list(reading.iter_tables(str(tmp_path / "big.jsonl")))
    assert [t.num_rows for t in tables] == [4] * 5  # four ~330-byte records reach 1,000 bytes
    assert [i for t in tables for i in t.column("id").to_pylist()] == [f"{i:03d}" for i in range(20)]


def test_wide_parquet_records_are_read_in_chunks_of_bounded_size(tmp_path, monkeypatch):
    """A warehouse export's records are kilobytes each (GA4's params, device, geo, items): a chunk
    is bounded by their uncompressed size, not only by a count of records."""
    from features.data import reading

    monkeypatch.setattr(reading, "PARQUET_CHUNK_BYTES", 4000)
    recs = [{"id": f"{i:03d}", "pad": "x" * 300 + str(i), "items": [{"item_id": f"p{i}"}] * 3} for i in range(20)]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "wide.parquet")
    tables = list(reading.iter_tables(str(tmp_path / "wide.parquet"), explode="items"))
    assert len(tables) == 2 and max(t.num_rows for t in tables) <= 3 * 12  # ~360 bytes a record: 11 a chunk
    assert [i for t in tables for i in t.column("id").to_pylist()] == [f"{i:03d}" for i in range(20) for _ in range(3)]
    flat = list(reading.iter_tables(str(tmp_path / "wide.parquet"), chunk_rows=5))
    assert [t.num_rows for t in flat] == [5] * 4  # chunk_rows still bounds narrow enough records


def test_an_exploded_event_keeps_its_elements_own_id(tmp_path):
    """Products that carry their own line id give the events those ids (no position appended)."""
    recs = [{"id": "o1", "ts": "2024-03-01T10:00:00Z", "user": "u1",
             "lines": [{"line": "o1-7", "sku": "A"}, {"line": "o1-9", "sku": "B"}]}]
    (tmp_path / "orders.jsonl").write_text(_lines(recs))
    (tmp_path / "m.yaml").write_text("""events:
  path: orders.jsonl
  explode: lines
  columns: {event_id: lines.line, ts: ts, user_id: user, item_id: lines.sku}
  constants: {event_type: purchase}
items:
  path: items.jsonl
  columns: {item_id: sku, title: name}
""")
    (tmp_path / "items.jsonl").write_text(_lines(ITEMS))
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert events.select(S.EVENT_ID, S.ITEM_ID).rows() == [("o1-7", "A"), ("o1-9", "B")]
