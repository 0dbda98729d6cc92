"""Values as shops write them: prices with currency signs and thousands, lists in text columns, and a
value that cannot be read leaving its row in the catalog (features/data/values.py)."""

import gzip
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.data import schema as S
from features.data.mapping import TableMapping, check_mapping
from features.data.validate import SchemaError
from features.data.values import json_text, list_text, number_text, typed_number
from jobs import import_events as IE


@pytest.mark.parametrize("text,decimal,want", [
    ("12.99", ".", 12.99), ("$12.99", ".", 12.99), ("£2.55", ".", 2.55), ("12.99 USD", ".", 12.99),
    ("USD 12.99", ".", 12.99), ("1,234.56", ".", 1234.56), ("1 234.56", ".", 1234.56), ("1'234.5", ".", 1234.5),
    ("$1,234", ".", 1234.0), ("-3.5", ".", -3.5), ("$10.00 - $20.00", ".", 10.0), ("10 to 20", ".", 10.0),
    ("€ 1.234,56", ",", 1234.56), ("12,99 EUR", ",", 12.99), ("12,99", ",", 12.99), ("1.5", ",", 1.5),
    ("1\u00a0234,50 €", ",", 1234.5), ("1e3", ".", 1000.0), ("US$ 5", ".", 5.0), ("12,50 kr", ",", 12.5),
    ("12,99 zł", ",", 12.99), ("Rs. 500", ".", 500.0), ("R$ 1.234,56", ",", 1234.56),
    # Not numbers, or ambiguous: left unread rather than guessed.
    ("12,99", ".", None), ("1,23,4", ".", None), ("call us", ".", None), (".a-box{color:#fff}", ".", None),
    ("12.99 each", ".", None),
    ("", ".", None),
])
def test_prices_are_read_as_shops_write_them(text, decimal, want):
    got = typed_number(pl.Series([text]), pl.Float64, decimal)[0]
    assert got == (pytest.approx(want) if want is not None else None)


def test_nan_and_infinity_stay_numbers_for_the_feature_job_to_quarantine():
    got = typed_number(pl.Series(["NAN", "nan", "inf", "-INF", "$12"]), pl.Float64).to_list()
    assert all(g is not None for g in got) and got[0] != got[0] and got[3] == float("-inf") and got[4] == 12.0
    words = pl.Series(["inf", "-Infinity", "NaN"])  # the rewrite leaves them for the cast, not as letters to strip
    assert pl.select(number_text(pl.lit(words))).to_series().to_list() == words.to_list()


@pytest.mark.parametrize("values,want", [
    (["0.25", "0.5", "1.5", "2.4", "2,5 kg", "3", "0", "-1.5", "two", None], [1, 1, 2, 2, None, 3, 0, -2, None, None]),
    ([0.25, 2.5, 0.0, None, float("nan")], [1, 3, 0, None, None]),  # a Parquet float column
])
def test_a_fractional_quantity_is_whole_units_and_never_zero(values, want):
    """Goods sold by weight: 0.25 kg is a purchase of one line, not the integer cast's 0 (which the
    feature job quarantined as a non-positive quantity); half rounds up; `2,5 kg` needs a decimal comma."""
    assert typed_number(pl.Series(values), pl.Int64).to_list() == want
    assert typed_number(pl.Series(["2,5 kg"]), pl.Int64, ",").to_list() == [3]


def test_a_purchase_sold_by_weight_reaches_the_features(tmp_path):
    from features.data.validate import ValidationConfig, validate_events

    (tmp_path / "orders.csv").write_text("t,u,i,qty\n2024-01-05 10:00,u1,cheese,0.25\n2024-01-05 10:01,u1,ham,1.75\n")
    (tmp_path / "m.yaml").write_text("events:\n  path: orders.csv\n  columns: {ts: t, user_id: u, item_id: i, quantity: qty}\n"
                                     "  constants: {event_type: purchase}\nitems:\n  columns: {item_id: i, title: i}\n")
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert events[S.QUANTITY].to_list() == [1, 2] and r["blanked"] == {} and r["warnings"] == []
    clean, quarantined = validate_events(events.to_arrow(), None, ValidationConfig())
    assert clean.height == 2 and quarantined.height == 0


def test_lists_in_text_columns_become_text():
    col = pl.Series(["[\"Home\", \"Kitchen\", \"Mugs\"]", "[[\"Toys\", \"Puzzles\"], [\"Gifts\"]]", "[]",
                     "[2 pack] socks", "Tools", None, "[{\"k\": 1}]"])
    assert list_text(col, path=True).to_list() == ["Home > Kitchen > Mugs", "Toys > Puzzles", None,
                                                   "[2 pack] socks", "Tools", None, "[{\"k\": 1}]"]
    assert list_text(pl.Series(["[\"Soft.\", \"Warm.\"]"]), path=False).to_list() == ["Soft. Warm."]
    parquet_list = pl.Series("c", [["A", "B"], None, []], pl.List(pl.String))
    assert list_text(parquet_list, path=True).to_list() == ["A > B", None, None]
    # A list kept as text reads as a JSON export's does: characters as written, not \u escapes.
    assert json_text(pl.Series("c", [["Café", "Küche"]])).to_list() == ['["Café", "Küche"]']


def test_the_decimal_separator_setting_is_checked():
    with pytest.raises(SchemaError, match=r"mapping.items.decimal_separator: ';'; allowed: '\.', ','"):
        check_mapping(TableMapping(path="x.csv", columns={S.ITEM_ID: "id", S.TITLE: "t"}, decimal_separator=";"),
                      "items")


def _amazon_like(tmp_path):
    """Reviews and product metadata shaped like the public Amazon review dumps: a price as text with
    a currency sign (or a range, or markup scraped into it), categories and descriptions as lists."""
    meta = [{"asin": "B01", "title": "Enamel mug", "price": "$12.99", "category": ["Home", "Kitchen", "Mugs"],
             "description": ["Holds 300 ml.", "Dishwasher safe."], "brand": "Acme"},
            {"asin": "B02", "title": "Summer dress", "price": "$10.00 - $20.00", "category": ["Clothing", "Dresses"],
             "description": [], "brand": ""},
            {"asin": "B03", "title": "Jigsaw puzzle", "price": ".a-box-inner{background-color:#fff}",
             "category": ["Toys", "Puzzles"], "description": ["1000 pieces"], "brand": "Zed"},
            {"asin": "B04", "title": "Tea towel", "price": "", "category": [], "brand": "Acme"}]
    with gzip.open(tmp_path / "meta.json.gz", "wt") as f:
        f.writelines(json.dumps(m) + "\n" for m in meta)
    reviews = [{"reviewerID": f"A{u}", "asin": a, "unixReviewTime": 1262304000 + 86400 * (u * 3 + k), "overall": 5.0}
               for u in range(3) for k, a in enumerate(["B01", "B02", "B03", "B04"])]
    with gzip.open(tmp_path / "reviews.json.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in reviews)
    (tmp_path / "m.yaml").write_text("""events:
  path: reviews.json.gz
  columns: {user_id: reviewerID, ts: unixReviewTime, item_id: asin}
  constants: {event_type: purchase}
items:
  path: meta.json.gz
  columns: {item_id: asin, title: title, brand: brand, price: price, category: category, description: description}
""")
    return tmp_path / "m.yaml"


def test_an_amazon_style_catalog_keeps_every_product(tmp_path):
    out = tmp_path / "out"
    r = IE.run(IE.ImportEventsConfig(mapping=str(_amazon_like(tmp_path)), output=str(out)))
    items = pl.read_parquet(out / "items.parquet").sort(S.ITEM_ID)
    assert r["items"] == 4 and r["events"] == 12 and r["rejected"] == {}
    assert items[S.PRICE].to_list() == [12.99, 10.0, None, None]  # a range is its lowest price
    assert items[S.CATEGORY].to_list() == ["Home > Kitchen > Mugs", "Clothing > Dresses", "Toys > Puzzles", None]
    assert items[S.DESCRIPTION].to_list() == ["Holds 300 ml. Dishwasher safe.", None, "1000 pieces", None]
    # The markup in B03's price is not a price: the product stays, without one, and the row is reported.
    blanked = pl.read_parquet(out / "blanked.parquet")
    assert blanked.select("table", S.REASON).rows() == [("items", "unparseable_price")]
    assert json.loads(blanked[S.RAW][0])["asin"] == "B03"
    assert r["blanked"] == {"items": {"unparseable_price": 1}}
    assert any(w.startswith("WARNING: items.price: 1 value(s) could not be read") for w in r["warnings"])


def test_a_later_unreadable_price_does_not_erase_an_item_s_price_from_the_events_file(tmp_path):
    rows = {"ts": ["2024-01-01", "2024-01-02", "2024-01-03"], "user": ["u1", "u2", "u3"], "sku": ["A", "A", "A"],
            "name": ["Mug", "Mug", "Mug"], "price": ["£3.50", "see shop", "£1,003.50"],
            "tags": [["Home", "Mugs"], ["Home", "Mugs"], None]}
    pq.write_table(pa.table(rows), tmp_path / "events.parquet")
    (tmp_path / "m.yaml").write_text("""events:
  path: events.parquet
  columns: {ts: ts, user_id: user, item_id: sku, price: price}
  constants: {event_type: purchase}
items:
  columns: {item_id: sku, title: name, price: price, category: tags}
""")
    out = tmp_path / "out"
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(out)))
    items, events = pl.read_parquet(out / "items.parquet"), pl.read_parquet(out / "events.parquet")
    assert items.select(S.PRICE, S.CATEGORY).rows() == [(1003.5, "Home > Mugs")]
    assert events[S.PRICE].to_list() == [3.5, None, 1003.5] and r["events"] == 3
    assert r["blanked"] == {"events": {"unparseable_price": 1}, "items": {"unparseable_price": 1}}


def test_a_category_from_several_columns_is_a_path(tmp_path):
    """An H&M-style articles table: the department and the product type make one category path."""
    (tmp_path / "tx.csv").write_text("t_dat,customer_id,article_id,price\n2020-09-01,c1,0108775015,0.0508\n")
    (tmp_path / "articles.csv").write_text("article_id,prod_name,index_group_name,product_type_name\n"
                                           "0108775015,Strap top,Ladieswear,Vest top\n0108775044,Strap top (1),,Vest top\n")
    (tmp_path / "m.yaml").write_text("""events:
  path: tx.csv
  columns: {ts: t_dat, user_id: customer_id, item_id: article_id, price: price}
  constants: {event_type: purchase}
items:
  path: articles.csv
  columns: {item_id: article_id, title: [prod_name, product_type_name], category: [index_group_name, product_type_name]}
""")
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items.rows() == [("0108775015", "Strap top Vest top", "Ladieswear > Vest top"),
                            ("0108775044", "Strap top (1) Vest top", "Vest top")]  # a code keeps its leading zero


def test_a_european_spreadsheet_export_with_decimal_commas(tmp_path):
    """Semicolons, a byte-order mark, Windows line ends, day-first times, decimal commas with a
    point for thousands and a euro sign; the items come from the same file, written the same way."""
    (tmp_path / "orders.csv").write_bytes(
        "\ufeffDatum;Kunde;Artikel;Bezeichnung;Menge;Preis\r\n01.12.2010 08:26;17850;85123A;Herz Laterne;6;2,55\r\n"
        "01.12.2010 08:28;17851;71053;Laterne weiß;1.000;1.234,50 €\r\n".encode())
    (tmp_path / "m.yaml").write_text("""events:
  path: orders.csv
  delimiter: ";"
  columns: {ts: Datum, user_id: Kunde, item_id: Artikel, quantity: Menge, price: Preis}
  constants: {event_type: purchase}
  ts_format: "%d.%m.%Y %H:%M"
  decimal_separator: ","
items:
  columns: {item_id: Artikel, title: Bezeichnung, price: Preis}
""")
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    items = pl.read_parquet(tmp_path / "out" / "items.parquet").sort(S.ITEM_ID)
    assert events.select(S.QUANTITY, S.PRICE).rows() == [(6, 2.55), (1000, 1234.5)]
    assert str(events[S.TS][1]) == "2010-12-01 08:28:00+00:00"
    assert items.select(S.ITEM_ID, S.TITLE, S.PRICE).rows() == [("71053", "Laterne weiß", 1234.5),
                                                                ("85123A", "Herz Laterne", 2.55)]
    assert r["warnings"] == [] and r["rejected"] == {} and r["blanked"] == {}


def test_ids_that_pandas_wrote_as_floats_match_the_other_file(tmp_path):
    """pandas writes an integer id column with a blank as floats: `10036.0` in the events' CSV and a
    float Parquet column, while the catalog (and the site calling the API) say `10036`. Every event
    would name no item and the feature job would have nothing left."""
    pq.write_table(pa.table({"ts": ["2024-01-05 10:00", "2024-01-05 10:01", "2024-01-05 10:02"],
                             "user": [17850.0, None, 12.0], "sku": [10036.0, 10037.0, 10036.0]}), tmp_path / "events.parquet")
    (tmp_path / "items.csv").write_text("sku,name\n10036.0,Mug\n10037,Tea towel\nA12.0,Lamp\n")
    (tmp_path / "m.yaml").write_text("events:\n  path: events.parquet\n  columns: {ts: ts, user_id: user, item_id: sku}\n"
                                     "  constants: {event_type: view}\nitems:\n  path: items.csv\n"
                                     "  columns: {item_id: sku, title: name}\n")
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    events = pl.read_parquet(tmp_path / "out" / "events.parquet").sort(S.TS)
    items = pl.read_parquet(tmp_path / "out" / "items.parquet").sort(S.ITEM_ID)
    assert events[S.ITEM_ID].to_list() == ["10036", "10037", "10036"]
    assert events[S.USER_ID].to_list() == ["17850", None, "12"]
    assert items[S.ITEM_ID].to_list() == ["10036", "10037", "A12.0"]  # only a whole number loses its ".0"


def test_a_guest_checkout_is_its_session_not_a_quarantined_event(tmp_path):
    (tmp_path / "events.csv").write_text("ts,customer,session,sku,event\n2024-01-05 10:00,c1,s1,A,purchase\n"
                                         "2024-01-05 10:01,,s2,B,purchase\n2024-01-05 10:02, ,s2,A,purchase\n"
                                         "2024-01-05 10:03,,,A,view\n")
    (tmp_path / "m.yaml").write_text("events:\n  path: events.csv\n  columns: {ts: ts, user_id: customer, session_id: session, "
                                     "item_id: sku, event_type: event}\nitems:\n  columns: {item_id: sku, title: sku}\n")
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    events = pl.read_parquet(tmp_path / "out" / "events.parquet").sort(S.TS)
    # without a session too there is no shopper to name: the feature job quarantines it (null_user_id)
    assert events[S.USER_ID].to_list() == ["c1", "anon:s2", "anon:s2", None]
    assert r["users"] == 2 and r["warnings"] == [
        "NOTE: 2 events have no user id but a session: each session is its own shopper (user_id anon:<session_id>), "
        "as for a guest checkout",
        "WARNING: events with neither a user id nor a session: 1. There is no shopper to fold them into, so the feature "
        "job will quarantine them as null_user_id and they count for nothing, popularity included; map the export's "
        "visitor, cookie or session column as user_id or session_id to keep them"]


def test_a_session_log_without_a_user_column_makes_each_session_a_guest(tmp_path):
    """A click log of sessions only (YooChoose, Diginetica's anonymous part) maps no user id at all:
    every event is its session's guest, and events that repeat exactly keep distinct ids."""
    (tmp_path / "clicks.csv").write_text("1,2014-04-07T10:51:09Z,X\n1,2014-04-07T10:54:09Z,Y\n2,2014-04-07T13:56:37Z,X\n"
                                         "2,2014-04-07T13:56:37Z,X\n")
    (tmp_path / "m.yaml").write_text("events:\n  path: clicks.csv\n  column_names: [session, ts, item]\n  columns: "
                                     "{ts: ts, session_id: session, item_id: item}\n  constants: {event_type: view}\n"
                                     "items:\n  columns: {item_id: item, title: item}\n")
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert events[S.USER_ID].to_list() == ["anon:1", "anon:1", "anon:2", "anon:2"] and r["users"] == 2
    assert events[S.EVENT_ID].n_unique() == 4 and r["rejected"] == {}


def test_an_export_that_writes_an_order_s_fields_on_its_first_line_only(tmp_path):
    """A Shopify-style orders export: the order's time and customer on its first line item only. With
    fill_down the later lines take them from above, within the same order (fill_down_by), across the
    import's chunks; a guest order's blank customer is not taken from the order before it."""
    (tmp_path / "orders.csv").write_text(
        "Name,Email,Created at,Lineitem sku,Lineitem name\n"
        "#1001,ann@x.com,2024-01-05 10:27:34 -0500,A,Mug\n#1001,,,B,Towel\n#1001,,,C,Lamp\n"
        "#1002,,2024-01-06 09:00:00 -0500,A,Mug\n#1002,,,B,Towel\n#1003,bob@x.com,2024-01-07 11:00:00 -0500,C,Lamp\n")
    (tmp_path / "m.yaml").write_text("""events:
  path: orders.csv
  columns: {ts: Created at, user_id: Email, session_id: Name, item_id: Lineitem sku}
  constants: {event_type: purchase}
  fill_down: [Email, Created at]
  fill_down_by: Name
items:
  columns: {item_id: Lineitem sku, title: Lineitem name}
""")
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out"), chunk_rows=2))
    ev = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert ev.select(S.USER_ID, S.ITEM_ID).rows() == [("ann@x.com", "A"), ("ann@x.com", "B"), ("ann@x.com", "C"),
                                                      ("anon:#1002", "A"), ("anon:#1002", "B"), ("bob@x.com", "C")]
    assert ev[S.TS].null_count() == 0 and str(ev[S.TS][2]) == "2024-01-05 15:27:34+00:00"
    assert r["rejected"] == {} and r["items"] == 3
    # a column the file does not have is named, with the file's columns
    (tmp_path / "m.yaml").write_text((tmp_path / "m.yaml").read_text().replace("[Email, Created at]", "[Emial]"))
    with pytest.raises(SchemaError, match=r"mapping.events.fill_down: column\(s\) \['Emial'\] are not in the file; "
                                          r"the file has: Name, Email"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out2")))


def test_fill_down_without_a_group_column_fills_like_a_spreadsheet_across_chunks():
    from features.data.fill import FillDown

    fill = FillDown(("order", "day"), None, "mapping.events")
    a = fill(pa.table({"order": ["7", "", None], "day": [3, None, None], "sku": ["A", "B", "C"]}))
    b = fill(pa.table({"order": [None, "8"], "day": [None, 4], "sku": ["D", "E"]}))
    assert a.column("order").to_pylist() == ["7"] * 3 and b.column("order").to_pylist() == ["7", "8"]
    assert a.column("day").to_pylist() == [3, 3, 3] and b.column("day").to_pylist() == [3, 4]
    assert a.column("sku").to_pylist() == ["A", "B", "C"] and a.schema.field("day").type == pa.int64()
    with pytest.raises(SchemaError, match="fill_down_by: 'order' is also in fill_down"):
        FillDown(("order",), "order", "mapping.events")


@pytest.mark.parametrize("events,items,message", [
    ("", "sku,name\nA,Mug\n", r"events: .*events.csv is empty \(no header, no rows\)"),
    ("ts,user,sku\n", "sku,name\nA,Mug\n", r"events: .*events.csv has no rows \(a header and nothing else\)"),
    ("ts,user,sku\n2024-01-05,u,A\n", "", r"items: .*items.csv is empty"),
    ("ts,user,sku\n2024-01-05,u,A\n", "sku,name\n", r"items: .*items.csv has no rows"),
])
def test_an_empty_export_is_named_at_the_import(tmp_path, events, items, message):
    (tmp_path / "events.csv").write_text(events)
    (tmp_path / "items.csv").write_text(items)
    (tmp_path / "m.yaml").write_text("events:\n  path: events.csv\n  columns: {ts: ts, user_id: user, item_id: sku}\n"
                                     "  constants: {event_type: view}\nitems:\n  path: items.csv\n"
                                     "  columns: {item_id: sku, title: name}\n")
    with pytest.raises(ValueError, match=message):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
