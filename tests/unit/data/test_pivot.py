"""A catalog in long form (a row per item and property, as RetailRocket's item_properties or an EAV
dump): `mapping.items.properties` makes a row per item (features/data/pivot.py), `make mapping`
guesses it, and a catalog that repeats item ids without it is warned about at import."""

import polars as pl
import pytest
import yaml

from features.config import ConfigError, from_dict
from features.data import schema as S
from features.data.mapping import Mapping, check_mapping
from features.data.pivot import Properties, pivot_properties
from features.data.validate import SchemaError
from jobs import import_events as IE
from jobs import suggest_mapping as SM

EVENTS = ("timestamp,visitorid,event,itemid\n1433221332117,v1,view,1\n1433221339117,v1,addtocart,2\n"
          "1433221399117,v2,transaction,3\n")
# Item 1's category changes (the later row, by time, is written first); item 3 has no property used.
LONG = ("timestamp,itemid,property,value\n1435460400000,1,categoryid,12\n1435460300000,1,categoryid,7\n"
        "1435460300000,1,available,1\n1435460300000,1,790,n24.000\n1435460300000,2,categoryid,7\n"
        "1435460300000,2,available,0\n1435460400000,2,available,\n1435460300000,3,888,123 456\n")


def _files(tmp_path) -> None:
    (tmp_path / "events.csv").write_text(EVENTS)
    (tmp_path / "props.csv").write_text(LONG)


def test_the_latest_value_by_time_wins_a_blank_sets_nothing_and_every_item_keeps_a_row():
    df = pl.read_csv(LONG.encode(), infer_schema_length=0)
    wide = pivot_properties(df, Properties("property", "value", "timestamp"), "itemid", "mapping.items",
                            used={"categoryid", "available"})
    assert wide.columns == ["itemid", "categoryid", "available"]  # only the properties used
    assert wide.rows() == [("1", "12", "1"), ("2", "7", "0"), ("3", None, None)]
    by_file = pivot_properties(df, Properties("property", "value"), "itemid", "mapping.items")
    assert by_file.row(0, named=True)["categoryid"] == "7"  # without latest_by, the file's last row
    assert set(by_file.columns) == {"itemid", "categoryid", "available", "790", "888"}
    with pytest.raises(SchemaError, match=r"latest_by column .ts. is not in the file; it has: timestamp"):
        pivot_properties(df, Properties("property", "value", "ts"), "itemid", "mapping.items")


def test_a_long_catalog_imports_as_one_item_per_id(tmp_path):
    _files(tmp_path)
    (tmp_path / "m.yaml").write_text(
        "events: {path: events.csv, columns: {ts: timestamp, user_id: visitorid, item_id: itemid, event_type: event},"
        " values: {event_type: {addtocart: add_to_cart, transaction: purchase}}}\n"
        "items: {path: props.csv, properties: {key: property, value: value, latest_by: timestamp},"
        " columns: {item_id: itemid, title: itemid, category: categoryid, in_stock: available, price: '790'}}\n")
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    assert r["raw_rows"]["items"] == 8 and r["items"] == 3 and r["warnings"] == []
    items = pl.read_parquet(tmp_path / "out" / "items.parquet").sort(S.ITEM_ID)
    assert items[S.CATEGORY].to_list() == ["12", "7", None]
    assert items[S.IN_STOCK].to_list() == [True, False, None]  # not said (validation then takes it as in stock)
    assert items[S.PRICE].to_list() == [24.0, None, None]

    (tmp_path / "m.yaml").write_text((tmp_path / "m.yaml").read_text().replace("'790'", "'999'"))
    with pytest.raises(SchemaError, match=r"columns.price: '999' is no property name or column of .*props.csv; "
                                          r"it has: itemid, categoryid, available, 790, 888$"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out2")))


def test_make_mapping_guesses_properties_and_the_guess_imports_unchanged(tmp_path):
    _files(tmp_path)
    text = SM.run(SM.SuggestMappingConfig(events=str(tmp_path / "events.csv"), items=str(tmp_path / "props.csv"),
                                          output=str(tmp_path / "m.yaml")))
    m = yaml.safe_load(text)
    assert m["items"]["properties"] == {"key": "property", "value": "value", "latest_by": "timestamp"}
    assert m["items"]["columns"] == {S.ITEM_ID: "itemid", S.TITLE: "itemid", S.CATEGORY: "categoryid",
                                     S.IN_STOCK: "available"}
    assert "a row per item and property" in text and "categoryid, available, 790, 888" in text
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    assert r["items"] == 3 and r["events"] == 3


def test_without_properties_a_repeated_item_id_is_warned_about_at_import(tmp_path):
    _files(tmp_path)
    (tmp_path / "m.yaml").write_text(
        "events: {path: events.csv, columns: {ts: timestamp, user_id: visitorid, item_id: itemid}, "
        "constants: {event_type: view}}\nitems: {path: props.csv, columns: {item_id: itemid, title: itemid}}\n")
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    assert r["items"] == 8
    assert any("5 row(s) repeat an item id" in w and "mapping.items.properties" in w for w in r["warnings"])


def test_properties_settings_are_checked_by_name():
    with pytest.raises(ConfigError, match=r"mapping.items.properties: required key\(s\) 'value' missing; "
                                          r"keys: key, value, latest_by"):
        from_dict(Mapping, {"items": {"properties": {"key": "property"}}}, prefix="mapping")
    m = from_dict(Mapping, {"events": {"path": "e.csv", "columns": {"item_id": "i", "ts": "t"},
                                       "properties": {"key": "k", "value": "v"}}}, prefix="mapping")
    with pytest.raises(SchemaError, match=r"mapping.events.properties: only for an items file"):
        check_mapping(m.events, "events")
