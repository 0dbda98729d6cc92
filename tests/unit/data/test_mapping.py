"""Importing a shop's own export: column mappings, RecBole atomic files, both UCI layouts."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pytest

from features.data import schema as S
from features.data.validate import SchemaError, ValidationConfig, validate_events, validate_items
from jobs import import_events as IE

EVENTS_CSV = """visitorid,timestamp,event,itemid,qty
u1,1433221332117,view,355908,
u1,1433221400000,addtocart,355908,1
u2,1433222000000,transaction,248676,two
u2,1433222000000,transaction,248676,2
u2,1433222000000,transaction,248676,2
u3,yesterday,view,355908,
u3,1433223000000,wishlist,355908,
"""
ITEMS_CSV = """itemid,name,categoryid,available
355908,Red mug,kitchen,1
248676,"Lamp, blue",home,0
"""
MAPPING = """events:
  path: events.csv
  columns: {user_id: visitorid, ts: timestamp, event_type: event, item_id: itemid, quantity: qty}
  values: {event_type: {addtocart: add_to_cart, transaction: purchase}}
  ts_unit: ms
items:
  path: items.csv
  columns: {item_id: itemid, title: name, category: categoryid, in_stock: available}
"""


def _shop(tmp_path, mapping: str = MAPPING):
    (tmp_path / "events.csv").write_text(EVENTS_CSV)
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    (tmp_path / "mapping.yaml").write_text(mapping)
    return tmp_path / "mapping.yaml"


def _read(out, name):
    return pl.read_parquet(out / f"{name}.parquet")


def test_a_csv_export_maps_to_the_contract_and_every_row_is_accounted_for(tmp_path):
    out = tmp_path / "out"
    r = IE.run(IE.ImportEventsConfig(mapping=str(_shop(tmp_path)), output=str(out)))  # paths relative to the mapping
    events, items, rejected = _read(out, "events"), _read(out, "items"), _read(out, "rejected")
    blanked = _read(out, "blanked")
    assert r["raw_rows"]["events"] == 7 == events.height + rejected.height
    assert rejected[S.REASON].to_list() == ["unparseable_ts"]  # an event without a time cannot be placed
    # A quantity "two" does not lose the purchase: imported without a quantity, its original row kept aside.
    assert blanked[S.REASON].to_list() == ["unparseable_quantity"] and json.loads(blanked[S.RAW][0])["qty"] == "two"
    assert r["blanked"] == {"events": {"unparseable_quantity": 1}}
    assert events[S.EVENT_TYPE].to_list() == ["view", "add_to_cart", "purchase", "purchase", "purchase", "wishlist"]
    assert events[S.QUANTITY].to_list() == [None, 1, None, 2, 2, None]
    assert str(events[S.TS][0]) == "2015-06-02 05:02:12.117000+00:00"
    ids = events[S.EVENT_ID].to_list()
    assert len(set(ids)) == 6 and ids[3:5] == [ids[2] + ":1", ids[2] + ":2"]  # identical lines stay distinct
    assert items[S.IN_STOCK].to_list() == [True, False] and items[S.TITLE][1] == "Lamp, blue"
    # The unknown type is imported as given and said aloud: the feature job will quarantine it.
    assert r["warnings"][1].startswith("WARNING: events.quantity: 1 value(s) could not be read (a decimal comma needs "
                                       "mapping.events.decimal_separator: \",\"); those rows are imported with quantity blank")
    assert r["warnings"][:1] == ["WARNING: event_type: 1 events carry values that are not event types of the contract "
                             "('wishlist' 1); the feature job will quarantine them as unknown_event_type. Map them in "
                             "the mapping's values.event_type, e.g. {wishlist: <event type>}; the event types: "
                             "search, view, click, add_to_cart, purchase, return"]
    # The rest is the feature job's validation: the unknown type is quarantined there, with its row.
    valid, quarantine = validate_events(events.to_arrow(), items[S.ITEM_ID], ValidationConfig(now="2020-01-01T00:00:00Z"))
    assert valid.height == 5 and quarantine[S.REASON].to_list() == ["unknown_event_type"]
    v_items, _ = validate_items(items.to_arrow(), ValidationConfig())
    assert v_items.height == 2


def test_csv_values_are_read_as_written_ids_with_leading_zeros_and_formatted_times(tmp_path):
    """A CSV's text reaches the mapping as written: no type guessing first, which would turn SKU
    "00123" into "123" and re-format a time past its `ts_format`."""
    (tmp_path / "clicks.csv.gz").write_bytes(gzip.compress(b"user,sku,query,click_time\nbb0,00123,xbox,2011-09-05 01:38:13.250\n"
                                                           b"bb1,0456,halo,2011-09-06 10:00:00.000\n"))  # gzipped, too
    (tmp_path / "products.csv").write_text("sku,name,price\n00123,Controller,1.50\n0456,Halo 3,20\n")
    (tmp_path / "m.yaml").write_text("""events:
  path: clicks.csv.gz
  columns: {user_id: user, item_id: sku, query: query, ts: click_time}
  constants: {event_type: click}
  ts_format: "%Y-%m-%d %H:%M:%S%.3f"
items:
  path: products.csv
  columns: {item_id: sku, title: name, price: price}
""")
    out = tmp_path / "out"
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(out)))
    events, items = _read(out, "events"), _read(out, "items")
    assert _read(out, "rejected").height == 0
    assert events[S.ITEM_ID].to_list() == ["00123", "0456"] and items[S.ITEM_ID].to_list() == ["00123", "0456"]
    assert str(events[S.TS][0]) == "2011-09-05 01:38:13.250000+00:00" and items[S.PRICE].to_list() == [1.5, 20.0]


def test_an_import_that_keeps_no_event_stops_naming_why(tmp_path):
    """Every row rejected (here a ts_format that matches no time) stops the import with the reasons,
    an example row and a hint, instead of an empty table that fails stages later."""
    mapping = MAPPING.replace("  ts_unit: ms\n", "  ts_format: \"%d/%m/%Y\"\n").replace("timestamp", "event")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"events: all 7 rows were rejected \(unparseable_ts 7\) \(a text time needs "
                                         r"ISO 8601 or the mapping's ts_format.*e\.g\. \{\"visitorid\": \"u1\""):
        IE.run(IE.ImportEventsConfig(mapping=str(_shop(tmp_path, mapping)), output=str(out)))
    assert _read(out, "rejected").height == 7  # and every row is there to look at


def test_mapping_errors_name_the_key_the_column_and_the_choices(tmp_path):
    with pytest.raises(SchemaError, match=r"mapping.events.columns.user_id: column 'visitor' is not in .*has: visitorid"):
        IE.run(IE.ImportEventsConfig(mapping=str(_shop(tmp_path, MAPPING.replace("user_id: visitorid", "user_id: visitor"))),
                                     output=str(tmp_path / "o")))
    (tmp_path / "semi.csv").write_text("visitorid;timestamp;event;itemid\nu1;1433221332117;view;355908\n")
    with pytest.raises(SchemaError, match=r"has: visitorid;timestamp;event;itemid \(one column: is the file separated by "
                                         r"';'\? set mapping.events.delimiter\)"):
        IE.run(IE.ImportEventsConfig(mapping=str(_shop(tmp_path)), events=str(tmp_path / "semi.csv"), output=str(tmp_path / "o")))
    with pytest.raises(SchemaError, match=r"unknown canonical column\(s\) \['customer'\]; allowed: event_id"):
        IE.run(IE.ImportEventsConfig(mapping=str(_shop(tmp_path, MAPPING.replace("user_id:", "customer:"))),
                                     output=str(tmp_path / "o")))
    with pytest.raises(SchemaError, match=r"ts_unit: 'minutes'; allowed: auto, s, ms, us, ns"):
        IE.run(IE.ImportEventsConfig(mapping=str(_shop(tmp_path, MAPPING.replace("ts_unit: ms", "ts_unit: minutes"))),
                                     output=str(tmp_path / "o")))
    from features.config import ConfigError

    with pytest.raises(ConfigError, match="unknown config key.*'colums'"):
        IE.run(IE.ImportEventsConfig(mapping=str(_shop(tmp_path, MAPPING.replace("columns: {item_id: itemid,", "colums: {item_id: itemid,"))),
                                     output=str(tmp_path / "o")))


def test_recbole_atomic_files(tmp_path):
    (tmp_path / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                       "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881251000\n")
    (tmp_path / "ml.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                      "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir\n")
    out = tmp_path / "out"
    r = IE.run(IE.ImportEventsConfig(mapping="recbole", events=str(tmp_path / "ml.inter"), items=str(tmp_path / "ml.item"),
                                     output=str(out)))
    assert r["events"] == 3 and r["items"] == 2 and r["rejected"] == {}
    events, items = _read(out, "events"), _read(out, "items")
    assert events[S.USER_ID].to_list() == ["196", "186", "196"]
    assert events[S.EVENT_TYPE].unique().to_list() == ["purchase"]
    assert str(events[S.TS][0]) == "1997-12-04 15:55:49+00:00"
    assert items[S.TITLE].to_list() == ["Kolya", "L.A. Confidential"]


def test_recbole_text_is_not_quoted_csv(tmp_path):
    """RecBole files are plain tab-separated text: a title that starts with a quote is that title,
    not a quoted field running over the rows after it (which lost them without a word)."""
    (tmp_path / "a.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nA1\t0001\t1388534400\n")
    (tmp_path / "a.item").write_text('item_id:token\ttitle:token_seq\n0001\t"Gentle shampoo 500ml\n0002\tRuler\n'
                                     '0003\t"Original" lip balm\n0004\t12" ruler\n')
    out = tmp_path / "out"
    r = IE.run(IE.ImportEventsConfig(mapping="recbole", events=str(tmp_path / "a.inter"), items=str(tmp_path / "a.item"),
                                     output=str(out)))
    assert r["items"] == 4 and r["rejected"] == {}
    assert _read(out, "items")[S.TITLE].to_list() == ['"Gentle shampoo 500ml', "Ruler", '"Original" lip balm', '12" ruler']


def test_both_uci_layouts_import_the_same(tmp_path):
    one = ("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
           "536365,85123A,WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom\n"
           "C536379,85123A,WHITE HANGING HEART,-1,12/1/2010 9:41,2.55,17850,United Kingdom\n"
           "536366,POST,POSTAGE,1,12/1/2010 9:50,18,,United Kingdom\n")
    two = ("Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
           "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
           "C536379,85123A,WHITE HANGING HEART,-1,2010-12-01 09:41:00,2.55,17850.0,United Kingdom\n"
           "536366,POST,POSTAGE,1,2010-12-01 09:50:00,18,,United Kingdom\n")
    got = []
    for name, text in (("one.csv", one), ("two.csv", two)):
        (tmp_path / name).write_text(text)
        out = tmp_path / name.replace(".csv", "")
        r = IE.run(IE.ImportEventsConfig(mapping="uci-online-retail", events=str(tmp_path / name), output=str(out)))
        assert r["events"] == 2 and r["rejected"] == {"non_product_line": 1}
        got.append(_read(out, "events"))
    assert got[0].equals(got[1])
    assert got[0][S.USER_ID].to_list() == ["c17850", "c17850"] and got[0][S.EVENT_TYPE].to_list() == ["purchase", "return"]


def test_a_non_utf8_export_names_the_encoding_setting_and_imports_with_it(tmp_path):
    """Spreadsheet exports are often cp1252/latin-1: without the setting the import stops naming the
    file and the key to set; with it, the text arrives intact."""
    (tmp_path / "events.csv").write_text(EVENTS_CSV)
    (tmp_path / "items.csv").write_bytes("itemid,name,categoryid,available\n355908,Café mug,kitchen,1\n"
                                         "248676,Crème lamp,home,0\n".encode("cp1252"))
    (tmp_path / "mapping.yaml").write_text(MAPPING)
    out = tmp_path / "out"
    with pytest.raises(SchemaError, match=r"items\.csv: not valid utf-8 text .*set mapping\.items\.encoding"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "mapping.yaml"), output=str(out)))
    (tmp_path / "mapping.yaml").write_text(MAPPING + "  encoding: cp1252\n")
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "mapping.yaml"), output=str(out)))
    assert _read(out, "items")[S.TITLE].to_list() == ["Café mug", "Crème lamp"]
    with pytest.raises(SchemaError, match="encoding: 'klingon' is not a character set"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "mapping.yaml"), output=str(out), encoding="klingon"))


def test_text_times_are_iso_8601_or_the_mappings_format_never_a_guess(tmp_path):
    """Offsets become UTC, a missing offset means UTC; a slashed date is rejected without ts_format
    (it was read day-first before: '12/1/2010' became 12 January and '12/31/2010' was lost)."""
    import datetime as dt

    from features.data.validate import iso_times

    utc = dt.timezone.utc
    got = iso_times(pl.Series(["2024-01-01T10:00:00+02:00", "2024-01-01 10:00:00 UTC", "2024-01-01 10:00 +0000",
                               "2024-01-01", "2024-01-01T10:00:00.5Z", "12/1/2010 8:26", "2024-02-30", "soon", None]))
    assert got.to_list() == [dt.datetime(2024, 1, 1, 8, tzinfo=utc), dt.datetime(2024, 1, 1, 10, tzinfo=utc),
                             dt.datetime(2024, 1, 1, 10, tzinfo=utc), dt.datetime(2024, 1, 1, tzinfo=utc),
                             dt.datetime(2024, 1, 1, 10, 0, 0, 500000, tzinfo=utc), None, None, None, None]
    # Year first, the date is unambiguous whatever separates it (Japanese and Chinese shops write slashes).
    assert iso_times(pl.Series(["2024/01/05 10:27", "2024.01.05", "2024/13/05", "05/01/2024"])).to_list() == [
        dt.datetime(2024, 1, 5, 10, 27, tzinfo=utc), dt.datetime(2024, 1, 5, tzinfo=utc), None, None]
    (tmp_path / "ev.csv").write_text("user,item,when\nu1,i1,12/1/2010 8:26\nu1,i2,12/31/2010 9:00\n")
    (tmp_path / "it.csv").write_text("item,name\ni1,Mug\ni2,Lamp\n")
    mapping = """events:
  path: ev.csv
  columns: {user_id: user, item_id: item, ts: when}
  constants: {event_type: purchase}
items:
  path: it.csv
  columns: {item_id: item, title: name}
"""
    (tmp_path / "m.yaml").write_text(mapping)
    with pytest.raises(ValueError, match=r"all 2 rows were rejected \(unparseable_ts 2\)"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    (tmp_path / "m.yaml").write_text(mapping.replace("  constants:", "  ts_format: \"%m/%d/%Y %H:%M\"\n  constants:"))
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    assert _read(tmp_path / "out", "events")[S.TS].to_list() == [dt.datetime(2010, 12, 1, 8, 26, tzinfo=utc),
                                                                   dt.datetime(2010, 12, 31, 9, tzinfo=utc)]


REES_CSV = """event_time,event_type,product_id,category_code,brand,price,user_id,user_session
2019-10-01 00:00:00 UTC,view,44600062,electronics.smartphone,shiseido,35.79,541312140,s1
2019-10-01 00:00:05 UTC,view,3900821,appliances.water_heater,aqua,33.20,554748717,s2
2019-10-01 00:01:00 UTC,cart,44600062,electronics.smartphone,,31.50,541312140,s1
2019-10-01 00:02:00 UTC,purchase,44600062,electronics.smartphone,shiseido,abc,541312140,s1
2019-10-01 00:03:00 UTC,view,1004767,,,250.0,1,s3
2019-09-30 23:00:00 UTC,view,44600062,electronics.phone,old brand,99.0,7,s4
"""
REES_MAPPING = """events:
  path: events.csv
  columns: {ts: event_time, event_type: event_type, item_id: product_id, user_id: user_id, session_id: user_session,
            price: price}
  values: {event_type: {cart: add_to_cart}}
items:
  columns: {item_id: product_id, title: [brand, category_code], category: category_code, brand: brand, price: price}
  category_separator: "."
"""


def test_items_from_the_events_file_take_each_fields_latest_value(tmp_path):
    """An event export whose rows carry the product's fields (no items file): one item per id, each
    field its latest non-blank value by event time (not file order), a title joined from several
    columns, first seen as created_at; a price that cannot be read is left blank there (the row kept,
    reported) and replaces no earlier price."""
    (tmp_path / "events.csv").write_text(REES_CSV)
    (tmp_path / "m.yaml").write_text(REES_MAPPING)
    out = tmp_path / "out"
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(out)))
    items, rejected, blanked = _read(out, "items"), _read(out, "rejected"), _read(out, "blanked")
    assert r["items_from_events"] and r["items"] == 3 and r["events"] == 6 and rejected.height == 0
    it = {row[S.ITEM_ID]: row for row in items.iter_rows(named=True)}
    phone = it["44600062"]
    assert (phone[S.PRICE], phone[S.BRAND], phone[S.CATEGORY]) == (31.5, "shiseido", "electronics > smartphone")
    assert phone[S.TITLE] == "shiseido electronics.smartphone"
    assert str(phone[S.CREATED_AT]) == "2019-09-30 23:00:00+00:00"
    assert it["3900821"][S.TITLE] == "aqua appliances.water_heater" and it["3900821"][S.CATEGORY] == "appliances > water_heater"
    assert it["1004767"][S.TITLE] is None  # nothing to name it by: the feature job quarantines it (missing_title)
    assert sorted(zip(blanked["table"], blanked[S.REASON])) == [("events", "unparseable_price"),
                                                               ("items", "unparseable_price")]


def test_items_from_the_events_file_need_their_columns(tmp_path):
    (tmp_path / "events.csv").write_text(REES_CSV)

    def run(mapping: str):
        (tmp_path / "m.yaml").write_text(mapping)
        return IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "o")))

    from features.config import ConfigError

    with pytest.raises(ConfigError, match=r"items: no items file; .*mapping.items.columns without a path"):
        run(REES_MAPPING.split("items:")[0])
    with pytest.raises(SchemaError, match=r"mapping.items.columns.title: required .*title: \[brand, category_code\]"):
        run(REES_MAPPING.replace("title: [brand, category_code], ", ""))
    with pytest.raises(SchemaError, match=r"mapping.items.columns.price: an empty list; name a column"):
        run(REES_MAPPING.replace("brand: brand, price: price}", "brand: brand, price: []}"))
    with pytest.raises(SchemaError, match=r"mapping.items.category_separator: ' '; a non-blank separator"):
        run(REES_MAPPING.replace('category_separator: "."', 'category_separator: " "'))
    with pytest.raises(SchemaError, match=r"mapping.items.category_list_separator: '.'; .* other than the path separator"):
        run(REES_MAPPING.replace('category_separator: "."', 'category_separator: "."\n  category_list_separator: "."'))
    with pytest.raises(SchemaError, match=r"mapping.items.columns.title: column 'name' is not in .*events.csv"):
        run(REES_MAPPING.replace("[brand, category_code]", "[brand, name]"))


def test_an_unbalanced_quote_that_swallows_rows_is_reported(tmp_path):
    """CSV quoting must stay (descriptions hold commas and line breaks), so a stray quote can read
    the rows after it into one value; the import says so, naming the file and the value, while a
    real multi-line value passes without a word."""
    _shop(tmp_path)
    (tmp_path / "items.csv").write_text('itemid,name,categoryid,available\n355908,"Red mug,kitchen,1\n'
                                        '248676,Lamp,home,0\n1,"Chair" tall",home,1\n2,"Two\nlines, one comma",home,1\n')
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "mapping.yaml"), output=str(tmp_path / "out")))
    assert r["items"] == 2  # the lamp went into the mug's title
    quotes = [w for w in r["warnings"] if "quoted value" in w]  # the shop's 'wishlist' type has its own
    assert len(quotes) == 1 and "items.csv: 1 line(s) inside a quoted value look like whole rows" in quotes[0]
    assert "'Red mug,kitchen,1" in quotes[0]
    clean = IE.run(IE.ImportEventsConfig(mapping=str(_shop(tmp_path)), output=str(tmp_path / "out2")))
    assert [w for w in clean["warnings"] if "quoted value" in w] == []
    # a folder of exports: the file that holds the quote is named
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.csv").write_text(EVENTS_CSV)
    (tmp_path / "parts" / "b.csv").write_text('visitorid,timestamp,event,itemid,qty\nu1,1433221332117,"view,355908,\n'
                                              'u2,1433222000000,transaction,248676,2\nu2,1433222000001,transaction,248676,2\n'
                                              'u3,1433223000000,"wishlist",355908,\n')
    r = IE.run(IE.ImportEventsConfig(mapping=str(_shop(tmp_path)), events=str(tmp_path / "parts"), output=str(tmp_path / "o3")))
    quotes = [w for w in r["warnings"] if "quoted value" in w]
    assert len(quotes) == 1 and "parts/b.csv: 2 line(s)" in quotes[0], r["warnings"]
    # a quote left open at the end of a file stops the import naming the file
    (tmp_path / "parts" / "b.csv").write_text('visitorid,timestamp,event,itemid,qty\nu1,1433221332117,"view,355908,\n'
                                              'u2,1433222000000,transaction,248676,2\n')
    with pytest.raises(SchemaError, match=r"(?s)parts/b.csv: CSV parse error.*an unbalanced double quote"):
        IE.run(IE.ImportEventsConfig(mapping=str(_shop(tmp_path)), events=str(tmp_path / "parts"), output=str(tmp_path / "o4")))


def test_blank_required_cells_reach_the_feature_jobs_quarantine(tmp_path):
    """A blank title or user is the feature job's to quarantine with its reason; the import used to
    stop on an Arrow cast error that named neither the file nor the row."""
    _shop(tmp_path)
    (tmp_path / "items.csv").write_text("itemid,name,categoryid,available\n355908,Red mug,kitchen,1\n248676,,home,0\n")
    (tmp_path / "events.csv").write_text(EVENTS_CSV.replace("u1,1433221400000", ",1433221400000"))
    out = tmp_path / "out"
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "mapping.yaml"), output=str(out)))
    assert r["items"] == 2 and r["users"] == 3
    _, bad_items = validate_items(_read(out, "items").to_arrow(), ValidationConfig())
    assert bad_items[S.REASON].to_list() == ["missing_title"]
    _, bad_events = validate_events(_read(out, "events").to_arrow(), pl.Series(["355908", "248676"]),
                                    ValidationConfig(now="2020-01-01T00:00:00Z"))
    assert "null_user_id" in bad_events[S.REASON].to_list()


@pytest.mark.parametrize("chunk_rows", [1, 2, 4])
def test_an_import_in_chunks_writes_what_one_pass_writes(tmp_path, chunk_rows):
    """The importer streams a large export a chunk at a time: event ids (identical lines in
    different chunks included), items merged from the events file, rejections and counts are
    those of one pass over the whole file."""
    (tmp_path / "events.csv").write_text(REES_CSV + REES_CSV.split("\n", 1)[1])  # every line twice, far apart
    (tmp_path / "m.yaml").write_text(REES_MAPPING)
    whole, chunked = tmp_path / "whole", tmp_path / "chunked"
    a = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(whole)))
    b = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(chunked), chunk_rows=chunk_rows))
    assert {k: v for k, v in a.items() if k != "output"} == {k: v for k, v in b.items() if k != "output"}
    for name in ("events", "items"):
        assert _read(whole, name).equals(_read(chunked, name)), name
    for name in ("rejected", "blanked"):
        assert _read(whole, name).sort(pl.all()).equals(_read(chunked, name).sort(pl.all())), name  # (interleaved)
    ids = _read(chunked, "events")[S.EVENT_ID].to_list()
    assert len(set(ids)) == len(ids) == 12 and sum(i.endswith(":1") for i in ids) == 6
    from features.data.reading import iter_tables

    assert [t.num_rows for t in iter_tables(str(tmp_path / "events.csv"), chunk_rows=chunk_rows)][:2] == [chunk_rows] * 2


def test_unmapped_shop_event_names_get_a_suggested_mapping():
    from features.data.values import guess_event_type

    assert [guess_event_type(v) for v in ("addtocart", "transaction", "Product Detail View", "remove_from_wishlist",
                                          "ORDER_PLACED", "search_results", "refund")] == [
        "add_to_cart", "purchase", "view", None, "purchase", "search", "return"]


def test_a_file_without_a_header_row_is_read_with_column_names_and_the_mistake_is_named(tmp_path):
    """A YooChoose-style clicks file has no header row: `column_names` names its columns; mapped as if
    it had one, the error says the first row looks like data and names the setting."""
    (tmp_path / "clicks.dat").write_text("1,2014-04-07T10:51:09.277Z,214536502,0\n"
                                         "1,2014-04-07T10:54:09.868Z,214536500,0\n2,2014-04-07T13:56:37.614Z,214662742,0\n")
    (tmp_path / "items.csv").write_text("item,name\n214536502,Red mug\n214536500,Blue mug\n214662742,Lamp\n")
    mapping = """events:
  path: clicks.dat
  format: csv
  {names}columns: {{session_id: session, ts: time, item_id: item, user_id: session}}
  constants: {{event_type: click}}
items:
  path: items.csv
  columns: {{item_id: item, title: name}}
"""
    (tmp_path / "m.yaml").write_text(mapping.format(names=""))
    with pytest.raises(SchemaError, match=r"mapping.events.columns.session_id: column 'session' is not in .*clicks.dat; "
                       r"the file has: 1, 2014-04-07T10:51:09.277Z, 214536502, 0 \(that first row looks like data: a "
                       r"file without a header row needs its columns named, mapping.events.column_names: \[...\]\)"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "o")))
    (tmp_path / "m.yaml").write_text(mapping.format(names="column_names: [session, time, item, category]\n  "))
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    events = _read(tmp_path / "out", "events")
    assert r["events"] == 3 and events[S.ITEM_ID].to_list() == ["214536502", "214536500", "214662742"]
    assert str(events[S.TS][0]) == "2014-04-07 10:51:09.277000+00:00"
    (tmp_path / "m.yaml").write_text(mapping.format(names="column_names: [session, session]\n  "))
    with pytest.raises(SchemaError, match=r"mapping.events.column_names: \['session', 'session'\]; a list of distinct"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "o")))


YC_CLICKS = ("session_id,timestamp,item_id,category\n1,2014-04-07T10:51:09.277Z,A,0\n1,2014-04-07T10:54:09.868Z,B,0\n"
             "2,2014-04-07T13:56:37.614Z,C,S\n")
YC_BUYS = "session,time,item,price,quantity\n2,2014-04-07T14:00:00Z,C,1046,1\n3,2014-04-08T09:00:00Z,D,2000,2\n"
YC_MAPPING = """events:
  - path: clicks.csv
    columns: {session_id: session_id, ts: timestamp, item_id: item_id}
    constants: {event_type: click}
  - path: buys.csv
    columns: {session_id: session, ts: time, item_id: item, price: price, quantity: quantity}
    constants: {event_type: purchase}
items:
  columns: {item_id: item_id, title: item_id, category: category, price: price}
"""


def test_several_event_files_each_with_its_own_columns_import_as_one_log(tmp_path):
    """YooChoose's clicks and buys, Diginetica's views and purchases, a shop's pageviews and orders:
    one events table, and the items from every file (each field its latest value by time)."""
    (tmp_path / "clicks.csv").write_text(YC_CLICKS)
    (tmp_path / "buys.csv").write_text(YC_BUYS)
    (tmp_path / "m.yaml").write_text(YC_MAPPING)
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    assert r["raw_rows"]["events"] == 5 and r["events"] == 5 and r["rejected"] == {}
    ev = _read(tmp_path / "out", "events").sort(S.TS)
    assert ev.select(S.USER_ID, S.EVENT_TYPE, S.ITEM_ID, S.PRICE, S.QUANTITY).rows() == [
        ("anon:1", "click", "A", None, None), ("anon:1", "click", "B", None, None), ("anon:2", "click", "C", None, None),
        ("anon:2", "purchase", "C", 1046.0, 1), ("anon:3", "purchase", "D", 2000.0, 2)]
    items = _read(tmp_path / "out", "items").sort(S.ITEM_ID)
    assert items.select(S.ITEM_ID, S.CATEGORY, S.PRICE).rows() == [("A", "0", None), ("B", "0", None),
                                                                   ("C", "S", 1046.0), ("D", None, 2000.0)]
    assert items[S.TITLE].to_list() == ["A", "B", "C", "D"]  # D, bought unseen, is titled by the buys' own id column
    # A mistake in the second file's mapping is named by its place in the list.
    (tmp_path / "m.yaml").write_text(YC_MAPPING.replace("item_id: item,", "item_id: itm,"))
    with pytest.raises(SchemaError, match=r"mapping.events\[1\].columns.item_id: column 'itm' is not in .*buys.csv"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out2")))


def test_the_docs_yoochoose_example_reads_its_headerless_dat_files(tmp_path):
    """docs/data.md's mapping for YooChoose's clicks and buys, as written there: .dat files without a
    header row, read as CSV by their first bytes (the name says nothing)."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "data.md").read_text()
    example = next(b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "yoochoose-clicks.dat" in b)
    (tmp_path / "m.yaml").write_text(example)
    (tmp_path / "yoochoose-clicks.dat").write_text("1,2014-04-07T10:51:09.277Z,214536502,0\n"
                                                    "2,2014-04-07T13:56:37.614Z,214662742,S\n")
    (tmp_path / "yoochoose-buys.dat").write_text("2,2014-04-07T14:00:00.000Z,214662742,1046,1\n")
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    assert r["events"] == 3 and r["items"] == 2 and r["rejected"] == {}
    assert sorted(_read(tmp_path / "out", "events")[S.EVENT_TYPE].to_list()) == ["click", "click", "purchase"]


OLIST = {  # Olist's relational export: lines -> orders (time, customer) -> customers (the shopper)
    "items.csv": "order_id,order_item_id,product_id,price\no1,1,p1,58.90\no1,2,p2,10.00\no2,1,p1,55.90\no3,1,p3,19.00\n"
                 "o9,1,p3,19.00\n",
    "orders.csv": "order_id,customer_id,order_purchase_timestamp\no1,c1,2017-09-13 08:59:02\no2,c2,2017-04-26 10:53:06\n"
                  "o3,c3,2018-01-14 14:33:31\n",
    "customers.csv": "customer_id,customer_unique_id\nc1,ann\nc2,bob\nc3,ann\n",
    "products.csv": "product_id,product_category_name\np1,perfumaria\np2,artes\np3,esporte_lazer\n",
    "names.csv": "product_category_name,product_category_name_english\nperfumaria,perfumery\nartes,art\n"
                 "esporte_lazer,sports_leisure\n",
}
OLIST_MAPPING = """events:
  path: items.csv
  join: [{path: orders.csv, key: order_id}, {path: customers.csv, key: customer_id}]
  columns: {ts: order_purchase_timestamp, user_id: customer_unique_id, item_id: product_id, session_id: order_id,
            price: price}
  constants: {event_type: purchase}
items:
  path: products.csv
  join: [{path: names.csv, key: product_category_name}]
  columns: {item_id: product_id, title: product_category_name_english, category: product_category_name_english}
"""


def test_a_relational_export_joins_each_line_to_its_order_and_customer(tmp_path):
    for name, text in OLIST.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "m.yaml").write_text(OLIST_MAPPING)
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    assert r["events"] == 5 and r["rejected"] == {}
    ev = _read(tmp_path / "out", "events").sort(S.TS, nulls_last=True)
    assert ev.row(-1, named=True)[S.SESSION_ID] == "o9" and ev.row(-1, named=True)[S.TS] is None  # in no order: the
    ev = ev.head(4)  # feature job quarantines it (null_ts), with its row
    assert ev.select(S.USER_ID, S.SESSION_ID, S.ITEM_ID).rows() == [("bob", "o2", "p1"), ("ann", "o1", "p1"),
                                                                   ("ann", "o1", "p2"), ("ann", "o3", "p3")]
    assert _read(tmp_path / "out", "items").sort(S.ITEM_ID)[S.TITLE].to_list() == ["perfumery", "art", "sports_leisure"]
    (tmp_path / "customers.csv").write_text(OLIST["customers.csv"] + "c3,carl\n")
    with pytest.raises(SchemaError, match=r"mapping.events.join\[1\]: .*customers.csv has 2 rows sharing a "
                                          r"'customer_id' \(e.g. 'c3'\); a looked-up table needs one row per key"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out2")))
    (tmp_path / "m.yaml").write_text(OLIST_MAPPING.replace("path: orders.csv", "path: order.csv"))
    with pytest.raises(SchemaError, match=r"mapping.events.join\[0\].path: .*order.csv: no such file"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out4")))
    (tmp_path / "m.yaml").write_text(OLIST_MAPPING.replace("key: customer_id", "key: client_id"))
    with pytest.raises(SchemaError, match=r"mapping.events.join\[1\].key: 'client_id' is not a column of"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out3")))
