"""`make mapping`: a mapping to start from, guessed from an export (features/data/suggest.py), that
the import then reads without a change for the usual export shapes, and that says what to check."""

import polars as pl
import pytest
import yaml

from features.config import ConfigError
from features.data import schema as S
from features.data.column_names import EVENT_NAMES, ITEM_NAMES, match_columns
from features.data.mapping import TableMapping, check_mapping
from features.data.validate import SchemaError
from jobs import import_events as IE
from jobs import suggest_mapping as SM


def _suggest(tmp_path, events: str, items: str | None = None, name: str = "events.csv") -> tuple[dict, str]:
    (tmp_path / name).write_text(events)
    if items is not None:
        (tmp_path / "items.csv").write_text(items)
    text = SM.run(SM.SuggestMappingConfig(events=str(tmp_path / name), output=str(tmp_path / "m.yaml"),
                                          items=str(tmp_path / "items.csv") if items is not None else None))
    return yaml.safe_load(text), text


def test_a_kaggle_style_event_log_imports_through_the_suggested_mapping_unchanged(tmp_path):
    m, text = _suggest(tmp_path, "event_time,event_type,product_id,category_code,brand,price,user_id,user_session\n"
                       "2019-10-01 00:00:00 UTC,view,44600062,electronics.smartphone,shiseido,35.79,541312140,s1\n"
                       "2019-10-01 00:00:01 UTC,cart,3900821,appliances.water_heater,aqua,33.20,554748717,s2\n"
                       "2019-10-01 00:00:04 UTC,purchase,44600062,electronics.smartphone,shiseido,35.79,554748717,s2\n"
                       "2019-10-01 00:00:05 UTC,view,1801,electronics.audio.headphone,sony,19.99,554748717,s2\n")
    assert m["events"]["columns"] == {S.TS: "event_time", S.USER_ID: "user_id", S.ITEM_ID: "product_id",
                                      S.EVENT_TYPE: "event_type", S.SESSION_ID: "user_session", S.PRICE: "price"}
    assert m["events"]["values"] == {S.EVENT_TYPE: {"cart": "add_to_cart"}}
    assert m["items"] == {"columns": {S.ITEM_ID: "product_id", S.TITLE: "product_id", S.CATEGORY: "category_code",
                                      S.BRAND: "brand", S.PRICE: "price"}, "category_separator": "."}
    assert "# CHECK: no product name found" in text
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    assert r["events"] == 4 and r["items"] == 3 and r["rejected"] == {} and r["warnings"] == []
    assert pl.read_parquet(tmp_path / "out" / "events.parquet")[S.EVENT_TYPE].to_list() == ["view", "add_to_cart",
                                                                                            "purchase", "view"]
    assert sorted(pl.read_parquet(tmp_path / "out" / "items.parquet")[S.CATEGORY]) == [
        "appliances > water_heater", "electronics > audio > headphone", "electronics > smartphone"]


def test_a_tracker_log_with_epoch_milliseconds_and_its_own_event_words(tmp_path):
    m, _ = _suggest(tmp_path, "timestamp,visitorid,event,itemid,transactionid\n1433221332117,257597,view,355908,\n"
                    "1433224214164,992329,addtocart,248676,\n1433221999827,111016,transaction,318965,4000\n"
                    "1433221955914,483717,wishlist,253185,\n", "itemid,name\n355908,Mug\n248676,Lamp\n318965,Tea\n253185,Jug\n")
    assert m["events"]["columns"] == {S.TS: "timestamp", S.USER_ID: "visitorid", S.ITEM_ID: "itemid",
                                      S.EVENT_TYPE: "event"}
    assert m["events"]["ts_unit"] == "auto"
    assert m["events"]["values"] == {S.EVENT_TYPE: {"addtocart": "add_to_cart", "transaction": "purchase"}}
    assert m["items"]["columns"] == {S.ITEM_ID: "itemid", S.TITLE: "name"}
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    assert r["events"] == 4 and "wishlist" in r["warnings"][0]  # the word it could not guess is warned about


def test_a_semicolon_spreadsheet_export_with_day_first_dates(tmp_path):
    m, text = _suggest(tmp_path, "Date;Customer;Product;Description;Quantity;Price\n"
                       "25/12/2023 10:00;c1;A;Mug;2;2,55\n03/01/2024 11:30;c2;B;Lamp;1;12,99\n")
    assert m["events"]["delimiter"] == ";" and m["events"]["ts_format"] == "%d/%m/%Y %H:%M"
    assert m["events"]["decimal_separator"] == "," and m["events"]["constants"] == {S.EVENT_TYPE: "purchase"}
    assert m["items"]["columns"][S.TITLE] == "Description"
    assert "# CHECK: no event type column: every row is taken as a purchase" in text
    assert "read both day-first and month-first" not in text  # 25/12 settles it
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    ev = pl.read_parquet(tmp_path / "out" / "events.parquet").sort(S.TS)
    assert r["rejected"] == {} and ev[S.PRICE].to_list() == [2.55, 12.99] and str(ev[S.TS][0]).startswith("2023-12-25")


def test_what_the_sample_cannot_settle_is_said(tmp_path):
    _, text = _suggest(tmp_path, "Name,Email,Created at,Lineitem quantity,Lineitem name,Lineitem sku\n"
                       "#1,a@x,01/02/2024 10:00,1,Mug,A\n#1,,,2,Lamp,B\n#1,,,1,Tea,C\n#2,b@x,03/04/2024 09:00,1,Mug,A\n")
    assert "read both day-first and month-first in this sample" in text
    assert "so fill_down fills ['Created at', 'Email'] within each 'Name'" in text
    (tmp_path / "gaps").mkdir()
    _, text = _suggest(tmp_path / "gaps", "ts,user,sku\n2024-01-05,u,A\n,u,B\n,v,C\n2024-01-06,v,A\n", name="gaps.csv")
    assert "no order column explains them" in text  # blank times that no order column accounts for
    (tmp_path / "de").mkdir()
    _, text = _suggest(tmp_path / "de", "Datum,Kunde,Artikel\n2024-01-05,k,A\n", name="de.csv")
    assert "no column of the events looks like user_id" in text and "the file has: Datum, Kunde, Artikel" in text


@pytest.mark.parametrize("columns,want", [
    (["Lineitem quantity", "Lineitem name", "Lineitem sku"], {S.ITEM_ID: "Lineitem sku", S.QUANTITY: "Lineitem quantity"}),
    (["InvoiceNo", "StockCode", "InvoiceDate", "CustomerID"],
     {S.TS: "InvoiceDate", S.USER_ID: "CustomerID", S.ITEM_ID: "StockCode", S.SESSION_ID: "InvoiceNo"}),
    (["properties.product_id", "userId", "timestamp", "event"],
     {S.TS: "timestamp", S.USER_ID: "userId", S.ITEM_ID: "properties.product_id", S.EVENT_TYPE: "event"}),
    (["Discount type", "sku"], {S.ITEM_ID: "sku"}),  # a word that only means the event type alone
    (["userId", "movieId", "rating", "timestamp"], {S.TS: "timestamp", S.USER_ID: "userId", S.ITEM_ID: "movieId"}),
    (["id", "visitor", "isbn", "time"], {S.TS: "time", S.USER_ID: "visitor", S.ITEM_ID: "isbn"}),  # an event's own id
    (["user.id", "product.id", "timestamp"], {S.TS: "timestamp", S.USER_ID: "user.id", S.ITEM_ID: "product.id"}),
    (["order_id", "order_item_id", "product_id"], {S.SESSION_ID: "order_id", S.ITEM_ID: "product_id"}),  # a line number
    (["order_id", "line_item_product_id"], {S.SESSION_ID: "order_id", S.ITEM_ID: "line_item_product_id"}),  # none else
])
def test_columns_are_matched_by_their_names(columns, want):
    assert match_columns(columns, EVENT_NAMES) == want
    assert match_columns(["Lineitem name", "Name"], ITEM_NAMES)[S.TITLE] == "Lineitem name"
    assert match_columns(["ID", "Name", "genres"], ITEM_NAMES) == {S.ITEM_ID: "ID", S.TITLE: "Name", S.CATEGORY: "genres"}
    # a nested catalog record's generic field names take their parent's (brand.name, price.amount)
    assert match_columns(["sku", "name", "brand.name", "price.amount", "price.currency"], ITEM_NAMES) == {
        S.ITEM_ID: "sku", S.TITLE: "name", S.BRAND: "brand.name", S.PRICE: "price.amount"}


def test_it_never_writes_over_a_mapping(tmp_path):
    (tmp_path / "e.csv").write_text("ts,user,item\n2024-01-05,u,A\n")
    (tmp_path / "m.yaml").write_text("mine")
    with pytest.raises(Exception, match="m.yaml exists"):
        SM.run(SM.SuggestMappingConfig(events=str(tmp_path / "e.csv"), output=str(tmp_path / "m.yaml")))
    with pytest.raises(Exception, match="events: .*nope.csv does not exist"):
        SM.run(SM.SuggestMappingConfig(events=str(tmp_path / "nope.csv"), output=str(tmp_path / "n.yaml")))
    assert (tmp_path / "m.yaml").read_text() == "mine"


def test_the_product_name_in_an_event_log_is_the_catalog_s_title(tmp_path):
    m, text = _suggest(tmp_path, "event_time,event_type,product_id,product_name,price,user_id,user_session\n"
                       "2011-09-01 08:25:00 UTC,purchase,20677,PINK POLKADOT BOWL,1.25,13509,565080\n")
    assert m["items"]["columns"] == {S.ITEM_ID: "product_id", S.TITLE: "product_name", S.PRICE: "price"}
    assert "CHECK" not in text


def test_an_export_with_order_fields_on_the_first_line_gets_fill_down_and_imports_every_line(tmp_path):
    m, text = _suggest(tmp_path, "Name,Email,Currency,Created at,Lineitem quantity,Lineitem name,Lineitem sku\n"
                       "#1001,a@x.com,EUR,2024-01-05 10:27:34 -0500,1,Mug,A\n#1001,,EUR,,2,Lamp,B\n#1001,,EUR,,1,Tea,C\n"
                       "#1002,,EUR,2024-01-06 09:00:00 -0500,1,Mug,A\n#1002,,EUR,,1,Jug,D\n"
                       "#1003,b@x.com,EUR,2024-01-07 11:00:00 -0500,3,Tea,C\n")
    assert m["events"]["fill_down"] == ["Created at", "Email"] and m["events"]["fill_down_by"] == "Name"
    assert m["events"]["columns"][S.SESSION_ID] == "Name" and m["items"]["columns"][S.TITLE] == "Lineitem name"
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    ev = pl.read_parquet(tmp_path / "out" / "events.parquet").sort(S.TS, S.ITEM_ID)
    assert r["events"] == 6 and ev[S.TS].null_count() == 0 and r["rejected"] == {}
    assert ev[S.USER_ID].to_list() == ["a@x.com"] * 3 + ["anon:#1002"] * 2 + ["b@x.com"]  # a guest's order is its own


def test_a_google_analytics_4_export_gets_key_values_and_explode_and_imports_unchanged(tmp_path):
    """GA4's BigQuery export: the session and search term in event_params ({key, value} records), the
    products in items. The suggestion is the mapping docs/data.md writes by hand, and its import is
    the hand mapping's (tests/unit/data/test_nested_exports.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.unit.data.test_nested_exports import ga4_records

    pq.write_table(pa.Table.from_pylist(ga4_records()), tmp_path / "ga4.parquet")
    text = SM.run(SM.SuggestMappingConfig(events=str(tmp_path / "ga4.parquet"), output=str(tmp_path / "m.yaml")))
    m = yaml.safe_load(text)
    assert (m["events"]["explode"], m["events"]["key_values"]) == ("items", "event_params")
    assert m["events"]["columns"] == {
        S.TS: "event_timestamp", S.USER_ID: "user_pseudo_id", S.ITEM_ID: "items.item_id", S.EVENT_TYPE: "event_name",
        S.SESSION_ID: "event_params.ga_session_id", S.QUANTITY: "items.quantity", S.PRICE: "items.price",
        S.QUERY: "event_params.search_term"}
    assert m["items"]["columns"] == {S.ITEM_ID: "items.item_id", S.TITLE: "items.item_name",  # not page_title
                                     S.CATEGORY: "items.item_category", S.BRAND: "items.item_brand",
                                     S.PRICE: "items.price"}
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert r["rejected"] == {} and events.select(S.EVENT_TYPE, S.SESSION_ID, S.QUERY, S.ITEM_ID, S.QUANTITY).rows() == [
        ("search", "1709287", "red mug", None, None), ("view", "1709287", None, "SKU-1", None),
        ("purchase", "1709287", None, "SKU-1", 2), ("purchase", "1709287", None, "SKU-2", 1)]


def test_a_trackers_json_lines_explode_orders_and_a_stray_time_does_not_decide_the_format(tmp_path):
    """Segment-style JSON lines: a view names its product at the record level, an order lists its
    products. Every product of every order becomes an event; one unreadable time among many is
    quarantined, not a reason to ask for a ts_format."""
    import json

    records = []
    for i in range(60):
        t = f"2024-03-01T10:{i:02d}:00Z"
        records.append({"messageId": f"v{i}", "timestamp": t, "userId": f"u{i % 7}", "event": "Product Viewed",
                        "properties": {"product_id": f"p{i % 5}", "price": 4.5}})
        records.append({"messageId": f"o{i}", "timestamp": t, "userId": f"u{i % 7}", "event": "Order Completed",
                        "properties": {"order_id": f"o{i}", "products": [
                            {"product_id": f"p{i % 5}", "quantity": 2, "price": 4.5},
                            {"product_id": f"p{(i + 1) % 5}", "quantity": 1}]}})
    records.append({"messageId": "bad", "timestamp": "yesterday", "userId": "u1", "event": "Product Viewed",
                    "properties": {"product_id": "p1"}})
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "items.csv").write_text("sku,name\n" + "".join(f"p{i},Item {i}\n" for i in range(5)))
    text = SM.run(SM.SuggestMappingConfig(events=str(tmp_path / "events.jsonl"), items=str(tmp_path / "items.csv"),
                                          output=str(tmp_path / "m.yaml")))
    m = yaml.safe_load(text)
    assert m["events"]["explode"] == "properties.products" and "ts_format" not in m["events"]
    assert m["events"]["columns"][S.ITEM_ID] == ["properties.products.product_id", "properties.product_id"]
    assert m["events"]["columns"][S.PRICE] == ["properties.products.price", "properties.price"]
    assert m["events"]["columns"][S.QUANTITY] == "properties.products.quantity"
    assert "# CHECK: 1 of 181 sampled times in 'timestamp' do not read (e.g. 'yesterday')" in text
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert r["rejected"] == {"unparseable_ts": 1} and events.height == 60 + 120
    assert events.filter(pl.col(S.EVENT_TYPE) == "purchase")[S.ITEM_ID].null_count() == 0
    assert events.filter(pl.col(S.EVENT_TYPE) == "view")[S.ITEM_ID].null_count() == 0


def test_mapping_auto_imports_through_the_guess_and_keeps_it_with_the_output(tmp_path):
    """`make run EVENTS=<export> MAPPING=auto`: one command from a shop's export; the guessed mapping
    is written next to the canonical tables, and the import is the one the same mapping file gives."""

    (tmp_path / "events.csv").write_text(
        "event_time,event_type,product_id,product_name,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,44600062,Shiseido cream,35.79,541312140,s1\n"
        "2019-10-01 00:00:01 UTC,cart,3900821,Aqua heater,33.20,554748717,s2\n"
        "2019-10-01 00:00:04 UTC,purchase,44600062,Shiseido cream,35.79,554748717,s2\n")
    r = IE.run(IE.ImportEventsConfig(mapping="auto", events=str(tmp_path / "events.csv"), output=str(tmp_path / "out")))
    assert r["events"] == 3 and r["items"] == 2 and r["rejected"] == {}
    guessed = yaml.safe_load((tmp_path / "out" / "mapping.yaml").read_text())
    assert guessed["items"]["columns"][S.TITLE] == "product_name"
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert events[S.EVENT_TYPE].to_list() == ["view", "add_to_cart", "purchase"]
    # A guess a person must settle stops the import, naming what and the file to edit.
    (tmp_path / "odd.csv").write_text("Date;Customer;Product;Quantity\n03/01/2024 10:00;c1;A;2\n04/01/2024 11:30;c2;B;1\n")
    with pytest.raises(ConfigError, match=r"mapping=auto: the guess needs a person.*day-first and month-first.*"
                                          r"odd_out/mapping.yaml"):
        IE.run(IE.ImportEventsConfig(mapping="auto", events=str(tmp_path / "odd.csv"), output=str(tmp_path / "odd_out")))
    assert not (tmp_path / "odd_out" / "events.parquet").exists() and (tmp_path / "odd_out" / "mapping.yaml").exists()
    (tmp_path / "noitem.csv").write_text("time,customer,amount\n2024-01-03T10:00:00Z,c1,2\n")
    with pytest.raises(ConfigError, match=r"no column of the events looks like item_id"):
        IE.run(IE.ImportEventsConfig(mapping="auto", events=str(tmp_path / "noitem.csv"), output=str(tmp_path / "n")))


def test_an_export_that_is_not_utf8_is_read_in_the_spreadsheet_character_set_and_said(tmp_path):
    """A Windows spreadsheet's CSV (cp1252: £, é) is guessed as such, the mapping says so, and the
    import reads the text as written."""
    (tmp_path / "events.csv").write_bytes("InvoiceDate,CustomerID,StockCode,Description,UnitPrice\n"
                                          "2024-01-03 10:00,c1,A,Café crème mug,£2.50\n"
                                          "2024-01-04 11:30,c2,B,Piñata,£12.00\n".encode("cp1252"))
    text = SM.run(SM.SuggestMappingConfig(events=str(tmp_path / "events.csv"), output=str(tmp_path / "m.yaml")))
    m = yaml.safe_load(text)
    assert m["events"]["encoding"] == "cp1252" and "is not UTF-8 text: read as cp1252" in text
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    items = pl.read_parquet(tmp_path / "out" / "items.parquet").sort(S.ITEM_ID)
    assert items[S.TITLE].to_list() == ["Café crème mug", "Piñata"] and items[S.PRICE].to_list() == [2.5, 12.0]


def test_a_file_without_a_header_row_gets_column_names_and_a_person_names_them(tmp_path):
    """A YooChoose-style click log has no header: its first row is not taken for column names; the
    time column is found by its values, and the rest is left to a person (mapping=auto stops)."""
    from features.config import ConfigError

    m, text = _suggest(tmp_path, "1,2014-04-07T10:51:09.277Z,214536502,0\n1,2014-04-07T10:54:09.868Z,214536500,0\n"
                                 "2,2014-04-07T13:56:37.614Z,214662742,0\n")
    assert m["events"]["column_names"] == ["column_1", "ts", "column_3", "column_4"]
    assert m["events"]["columns"] == {S.TS: "ts"} and "reads as data, not a header" in text
    with pytest.raises(ConfigError, match="events.csv reads as data, not a header"):
        IE.run(IE.ImportEventsConfig(mapping="auto", events=str(tmp_path / "events.csv"), output=str(tmp_path / "o")))
    # named by a person, it imports every line, the first included
    mapping = text.replace("- column_1", "- session").replace("- column_3", "- item").replace(
        "columns:\n    ts: ts", "columns:\n    ts: ts\n    session_id: session\n    item_id: item").replace(
        "<item id column>", "item")
    (tmp_path / "named.yaml").write_text(mapping)
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "named.yaml"), output=str(tmp_path / "out")))
    assert r["events"] == 3 and r["rejected"] == {}
    # the same text under a name the import reads as Parquet (YooChoose's clicks.dat) is read as text
    (tmp_path / "dat").mkdir()
    m, text = _suggest(tmp_path / "dat", (tmp_path / "events.csv").read_text(), name="clicks.dat")
    assert m["events"]["format"] == "csv" and m["events"]["column_names"][1] == "ts"
    assert "is not Parquet whatever its name: read as csv (format: csv)" in text


def test_movielens_1m_dat_files_separated_by_two_colons(tmp_path):
    """MovieLens-1M's ratings.dat and movies.dat: no header, `::` between fields (more than one
    character: Arrow's CSV reader takes one), the titles in latin-1. The guess reads them, finds the
    epoch-seconds column, and once a person names the rest the import reads every line."""
    from features.data.validate import SchemaError

    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (tmp_path / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                          "661::Am\u00e9lie (2001)::Comedy|Romance\n".encode("latin-1"))
    text = SM.run(SM.SuggestMappingConfig(events=str(tmp_path / "ratings.dat"), items=str(tmp_path / "movies.dat"),
                                          output=str(tmp_path / "m.yaml")))
    m = yaml.safe_load(text)
    assert (m["events"]["format"], m["events"]["delimiter"], m["items"]["delimiter"]) == ("csv", "::", "::")
    assert m["events"]["column_names"] == ["column_1", "column_2", "column_3", "ts"] and m["events"]["ts_unit"] == "auto"
    assert m["items"]["encoding"] == "cp1252" and m["items"]["column_names"] == ["column_1", "column_2", "column_3"]
    assert "movies.dat reads as data, not a header (1193, One Flew" in text  # an id over a column of ids
    m["events"]["column_names"] = ["user", "item", "rating", "ts"]
    m["events"]["columns"].update({S.USER_ID: "user", S.ITEM_ID: "item"})
    m["items"].update(column_names=["item", "title", "genres"],
                      columns={S.ITEM_ID: "item", S.TITLE: "title", S.CATEGORY: "genres"})
    (tmp_path / "named.yaml").write_text(yaml.safe_dump(m))
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "named.yaml"), output=str(tmp_path / "out")))
    assert r["events"] == 3 and r["items"] == 2 and r["rejected"] == {}
    items = pl.read_parquet(tmp_path / "out" / "items.parquet").sort(S.ITEM_ID)
    assert items[S.TITLE].to_list() == ["One Flew Over the Cuckoo's Nest (1975)", "Amélie (2001)"]
    events = pl.read_parquet(tmp_path / "out" / "events.parquet").sort(S.TS)
    assert str(events[S.TS][0]) == "2000-12-31 21:33:33+00:00" and events[S.USER_ID].to_list()[0] == "2"
    # a line with another number of fields stops the read, naming it
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3\n")
    with pytest.raises(SchemaError, match=r"a line with 3 fields separated by '::' where the columns are 4"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "named.yaml"), output=str(tmp_path / "out2")))


def test_shopify_s_products_and_orders_exports_keep_every_variant_and_every_guest_order(tmp_path):
    """Shopify's products export writes a product's title, description and vendor on its first row
    only (further variants and images leave them blank); its orders export numbers orders #1001."""
    products = ("Handle,Title,Body (HTML),Vendor,Option1 Value,Variant SKU,Variant Price,Image Src\n"
                "mug,Ceramic Mug,<p>Stoneware</p>,Clayworks,Blue,MUG-BLU,14.00,mug-blue.jpg\n"
                "mug,,,,Green,MUG-GRN,14.00,mug-green.jpg\nmug,,,,,,,mug-side.jpg\n"
                "apron,Linen Apron,<p>Linen</p>,Flax,S/M,APR-SM,32.00,apron.jpg\napron,,,,L/XL,APR-LX,34.00,\n"
                "towel,Tea Towel,<p>Cotton</p>,Flax,Default Title,TOW-3,19.50,towel.jpg\n")
    m, text = _suggest(tmp_path, "Name,Email,Created at,Lineitem quantity,Lineitem name,Lineitem sku\n"
                       "#1001,ann@x.com,2024-03-01 10:02:09 +0100,1,Ceramic Mug - Green,MUG-GRN\n"
                       "#1001,ann@x.com,2024-03-01 10:02:09 +0100,1,Linen Apron - L/XL,APR-LX\n"
                       "#1002,,2024-03-04 07:59:58 +0100,1,Tea Towel,TOW-3\n", products)
    assert m["events"]["columns"][S.SESSION_ID] == "Name"  # so the guest's order (no email) is kept
    assert m["items"]["fill_down"] == ["Title", "Body (HTML)", "Vendor"] and m["items"]["fill_down_by"] == "Handle"
    assert "they continue the product above them ('Handle' repeats" in text
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    items = pl.read_parquet(tmp_path / "out" / "items.parquet").drop_nulls(S.ITEM_ID).sort(S.ITEM_ID)
    assert items.select(S.ITEM_ID, S.TITLE, S.BRAND).rows() == [
        ("APR-LX", "Linen Apron", "Flax"), ("APR-SM", "Linen Apron", "Flax"), ("MUG-BLU", "Ceramic Mug", "Clayworks"),
        ("MUG-GRN", "Ceramic Mug", "Clayworks"), ("TOW-3", "Tea Towel", "Flax")]
    assert r["events"] == 3 and not any("neither a user id nor a session" in w for w in r["warnings"])


def test_a_woocommerce_product_export_takes_the_sale_price_where_set_and_never_a_date_as_a_price(tmp_path):
    items = ("ID,Type,SKU,Name,Description,\"Date sale price starts\",\"In stock?\",\"Sale price\",\"Regular price\","
             "Categories\n16,variation,mug-blu,Ceramic Mug - Blue,,2024-03-01,1,12.00,14.00,\n"
             "17,variation,mug-grn,Ceramic Mug - Green,,,0,,14.00,\n20,simple,apron,Linen Apron,Linen.,,1,,32.00,"
             "Apparel > Aprons\n")
    m, text = _suggest(tmp_path, "timestamp,user,item\n2024-03-02,u1,mug-blu\n2024-03-03,u2,apron\n", items)
    assert m["items"]["columns"][S.PRICE] == ["Sale price", "Regular price"]
    assert m["items"]["columns"][S.IN_STOCK] == "In stock?" and "price: 'Sale price' where set" in text
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    got = pl.read_parquet(tmp_path / "out" / "items.parquet").sort(S.ITEM_ID)
    assert got.select(S.ITEM_ID, S.PRICE, S.IN_STOCK).rows() == [("apron", 32.0, True), ("mug-blu", 12.0, True),
                                                                  ("mug-grn", 14.0, False)]


def test_a_till_export_with_the_date_and_the_time_of_day_in_two_columns(tmp_path):
    m, text = _suggest(tmp_path, "Date,Time,Receipt,Customer,Item,Description,Qty\n25/01/2024,10:27:34,R1,c1,A1,Mug,1\n"
                       "25/01/2024,10:27:34,R1,c1,B2,Lamp,1\n26/01/2024,9:05:00,R2,,A1,Mug,2\n")
    assert m["events"]["columns"][S.TS] == ["Date", "Time"] and m["events"]["ts_format"] == "%d/%m/%Y %H:%M:%S"
    assert m["events"]["columns"][S.SESSION_ID] == "Receipt"
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    ev = pl.read_parquet(tmp_path / "out" / "events.parquet").sort(S.TS)
    assert [t.isoformat() for t in ev[S.TS]] == ["2024-01-25T10:27:34+00:00"] * 2 + ["2024-01-26T09:05:00+00:00"]
    assert ev[S.USER_ID].to_list() == ["c1", "c1", "anon:R2"]


@pytest.mark.parametrize("name, want", [("train-item-views.csv", "view"), ("yoochoose-clicks.csv", "click"),
                                        ("orders.csv", "purchase")])
def test_a_log_without_an_event_column_is_taken_as_what_its_file_is_named_for(tmp_path, name, want):
    m, text = _suggest(tmp_path, "sessionId;userId;itemId;eventdate\n1;NA;81766;2016-05-09\n", name=name)
    assert m["events"]["constants"] == {S.EVENT_TYPE: want}


def test_a_time_column_with_a_name_it_does_not_know_and_names_over_codes(tmp_path):
    """H&M's transactions call the date t_dat; its articles give each grouping as a code and a name."""
    m, text = _suggest(tmp_path, "t_dat,customer_id,article_id,price\n2018-09-20,c1,0663713001,0.0508\n"
                       "2018-09-21,c2,0505221004,0.0152\n",
                       "article_id,prod_name,product_type_no,product_type_name,department_no,department_name\n"
                       "0663713001,Atlanta Push Body,283,Underwear body,1338,Casual Lingerie\n"
                       "0505221004,Inca jumper,252,Sweater,1626,Knitwear\n")
    assert m["events"]["columns"][S.TS] == "t_dat" and "the time is 't_dat'" in text
    assert m["items"]["columns"] == {S.ITEM_ID: "article_id", S.TITLE: "prod_name", S.CATEGORY: "product_type_name"}
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    assert r["events"] == 2 and r["rejected"] == {}
    ids = pl.read_parquet(tmp_path / "out" / "events.parquet")[S.ITEM_ID].sort().to_list()
    assert ids == ["0505221004", "0663713001"]  # ids are text: the leading zero stays
    m, _ = _suggest(tmp_path / "out", "ts,user,item\n2024-01-01,u,1\n",
                    "item_id,title,category_id,category_name,brand_code,brand_name\n1,Mug,7,Kitchen,B1,Clayworks\n")
    assert m["items"]["columns"][S.CATEGORY] == "category_name" and m["items"]["columns"][S.BRAND] == "brand_name"


def test_a_line_with_a_negative_quantity_is_a_return_where_the_mapping_says_so(tmp_path):
    m, text = _suggest(tmp_path, "Date,Receipt,Customer,Item,Description,Qty\n2024-01-05,R1,c1,A1,Mug,2\n"
                       "2024-01-07,R9,c1,A1,Mug,-1\n2024-01-06,R3,c2,C3,Tea,1\n")
    assert m["events"]["negative_quantity"] == "return" and "some quantities in 'Qty' are negative" in text
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    ev = pl.read_parquet(tmp_path / "out" / "events.parquet").sort(S.TS)
    assert ev.select(S.EVENT_TYPE, S.QUANTITY).rows() == [("purchase", 2), ("purchase", 1), ("return", 1)]
    for bad, table in (("refund", "events"), ("return", "items")):
        with pytest.raises(SchemaError, match=rf"mapping.{table}.negative_quantity: '{bad}'; allowed: quarantine, "
                                              r"return \(return: events only\)"):
            cols = {S.ITEM_ID: "i"} if table == "events" else {S.ITEM_ID: "i", S.TITLE: "t"}
            check_mapping(TableMapping(path="x.csv", columns=cols, negative_quantity=bad), table)


def test_a_magento_catalog_takes_its_special_price_where_set(tmp_path):
    items = ("sku,store_view_code,name,price,special_price,special_price_from_date\n24-MB01,,Joust Duffle Bag,34.00,,\n"
             "24-MB04,,Strive Shoulder Pack,32.00,26.00,2024-01-01 00:00:00\n")
    m, _ = _suggest(tmp_path, "timestamp,user,item\n2024-03-02,u1,24-MB01\n", items)
    assert m["items"]["columns"][S.PRICE] == ["special_price", "price"]


def test_a_list_of_categories_in_one_cell_becomes_its_deepest_path(tmp_path):
    """WooCommerce writes every category of a product in one cell ("Clothing > Hoodies, Clothing");
    Magento its paths from the root with "/". Kept whole, each combination was a category of its
    own, and a filter on "Gear" matched nothing under "Default Category/Gear"."""
    woo = ("SKU,Name,Categories\nh1,Zip Hoodie,\"Clothing > Hoodies, Clothing\"\nh2,Pullover,Clothing > Hoodies\n"
           "t1,Tee,\"Clothing, Clothing > Tshirts\"\nm1,Mug,Kitchen\nb1,Rucksack,\"Bags, Backpacks\"\n")
    for d in ("woo", "magento", "plain"):
        (tmp_path / d).mkdir()
    m, text = _suggest(tmp_path / "woo", "timestamp,user,item\n2024-03-02,u1,h1\n", woo)
    assert m["items"]["category_list_separator"] == "," and "category_separator" not in m["items"]
    assert "'Categories' holds category paths" in text
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "woo" / "m.yaml"), output=str(tmp_path / "out")))
    got = pl.read_parquet(tmp_path / "out" / "items.parquet").sort(S.ITEM_ID)
    assert got[S.CATEGORY].to_list() == ["Bags", "Clothing > Hoodies", "Clothing > Hoodies", "Kitchen",
                                         "Clothing > Tshirts"]  # b1, h1, h2, m1, t1
    magento = ("sku,name,categories\nb1,Bag,\"Default Category/Gear,Default Category/Gear/Bags\"\n"
               "w1,Watch,Default Category/Gear/Watches\nj1,Jacket,\"Default Category/Men/Tops/Jackets\"\n")
    m, text = _suggest(tmp_path / "magento", "timestamp,user,item\n2024-03-02,u1,b1\n", magento)
    assert m["items"]["category_list_separator"] == "," and m["items"]["category_separator"] == "/"
    assert m["items"]["category_root"] == "Default Category"
    assert "every sampled category starts with 'Default Category', dropped (category_root)" in text
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "magento" / "m.yaml"), output=str(tmp_path / "out2")))
    got = pl.read_parquet(tmp_path / "out2" / "items.parquet").sort(S.ITEM_ID)
    assert got[S.CATEGORY].to_list() == ["Gear > Bags", "Men > Tops > Jackets", "Gear > Watches"]  # as the storefront
    plain = "SKU,Name,Category\na,A,\"Bags, Backpacks\"\nb,B,Kitchen\nc,C,Mugs & Cups\nd,D,St. Patrick's Day\n"
    m, _ = _suggest(tmp_path / "plain", "timestamp,user,item\n2024-03-02,u1,a\n", plain)  # names, not lists or paths
    assert "category_list_separator" not in m["items"] and "category_separator" not in m["items"]


def test_a_woocommerce_variation_takes_its_parent_s_text_where_its_own_is_blank(tmp_path):
    items = ("ID,Type,SKU,Name,Description,Categories,\"Regular price\",Parent\n"
             "15,variable,mug,Ceramic Mug,Stoneware mug.,Kitchen > Mugs,,\n"
             "16,variation,mug-blu,Ceramic Mug - Blue,,,14.00,id:15\n"
             "17,variation,mug-grn,Ceramic Mug - Green,Glazed green.,,14.00,id:15\n"
             "18,variation,apr-s,Apron S,,,30.00,apron\n19,simple,apron,Apron,Linen.,Aprons,30.00,\n"
             "20,variation,x-1,Orphan,,,1.00,id:99\n")
    m, text = _suggest(tmp_path, "timestamp,user,item\n2024-03-02,u1,mug-blu\n2024-03-03,u2,apr-s\n", items)
    assert m["items"]["parent"] == {"column": "Parent", "id": "ID"} and "rows name a parent row in 'Parent'" in text
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    got = pl.read_parquet(tmp_path / "out" / "items.parquet").sort(S.ITEM_ID)
    assert got.select(S.ITEM_ID, S.DESCRIPTION, S.CATEGORY).rows() == [
        ("apr-s", "Linen.", "Aprons"),  # a parent named by its SKU, not its ID
        ("apron", "Linen.", "Aprons"), ("mug", "Stoneware mug.", "Kitchen > Mugs"),
        ("mug-blu", "Stoneware mug.", "Kitchen > Mugs"), ("mug-grn", "Glazed green.", "Kitchen > Mugs"),  # its own
        ("x-1", None, None)]  # a parent that is not in the file: nothing to take
    (tmp_path / "m.yaml").write_text((tmp_path / "m.yaml").read_text().replace("column: Parent", "column: Parent2"))
    with pytest.raises(SchemaError, match=r"mapping.items.parent: column\(s\) \['Parent2'\] are not in the file"):
        IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out2")))


def test_several_event_files_get_one_mapping_each_and_import_in_one_command(tmp_path):
    (tmp_path / "clicks.csv").write_text("session_id,timestamp,item_id,category\n1,2014-04-07T10:51:09Z,A,0\n"
                                         "2,2014-04-07T13:56:37Z,C,S\n")
    (tmp_path / "buys.csv").write_text("session_id,timestamp,item_id,price,quantity\n2,2014-04-07T14:00:00Z,C,10,1\n")
    both = f"{tmp_path / 'clicks.csv'},{tmp_path / 'buys.csv'}"
    text = SM.run(SM.SuggestMappingConfig(events=both, output=str(tmp_path / "m.yaml")))
    m = yaml.safe_load(text)
    assert [e["constants"] for e in m["events"]] == [{S.EVENT_TYPE: "click"}, {S.EVENT_TYPE: "purchase"}]
    assert m["events"][1]["columns"][S.PRICE] == "price" and "# CHECK: buys.csv: no event type column" in text
    r = IE.run(IE.ImportEventsConfig(mapping="auto", events=both, output=str(tmp_path / "out")))
    assert r["events"] == 3 and r["items"] == 2
    with pytest.raises(ConfigError, match=r"events: 2 files \(.*\) for a mapping with 1 events file\(s\)"):
        IE.run(IE.ImportEventsConfig(mapping=_one_file_mapping(tmp_path), events=both, output=str(tmp_path / "o2")))


def _one_file_mapping(tmp_path) -> str:
    (tmp_path / "one.yaml").write_text("events: {path: clicks.csv, columns: {ts: timestamp, item_id: item_id, "
                                       "session_id: session_id}, constants: {event_type: click}}\n"
                                       "items: {columns: {item_id: item_id, title: item_id}}\n")
    return str(tmp_path / "one.yaml")


def test_a_relational_export_s_files_are_guessed_as_look_ups_of_the_order_lines(tmp_path):
    """Olist: order lines (order_item_id is a line's number, not a product), the orders (time,
    customer) and the customers, given as three files: the last two are looked up, not events. Each
    order has a customer_id of its own; the shopper is the person, customer_unique_id (ann's two)."""
    files = {"lines.csv": "order_id,order_item_id,product_id,price\no1,1,p1,58.90\no1,2,p2,10.00\no2,1,p1,55.90\n"
                          "o3,1,p2,10.00\n",
             "orders.csv": "order_id,customer_id,order_purchase_timestamp\no1,c1,2017-09-13 08:59:02\n"
                           "o2,c2,2017-04-26 10:53:06\no3,c3,2017-10-01 12:00:00\n",
             "customers.csv": "customer_id,customer_zip_code_prefix,customer_unique_id,customer_city\n"
                              "c1,14409,ann,franca\nc2,9790,bob,sao paulo\nc3,14409,ann,franca\n",
             "products.csv": "product_id,product_category_name,product_description_lenght\np1,perfumaria,287\n"
                             "p2,artes,276\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    events = ",".join(str(tmp_path / n) for n in ("lines.csv", "orders.csv", "customers.csv"))
    m = yaml.safe_load(SM.run(SM.SuggestMappingConfig(events=events, items=str(tmp_path / "products.csv"),
                                                      output=str(tmp_path / "m.yaml"))))
    assert m["events"]["join"] == [{"path": str(tmp_path / "orders.csv"), "key": "order_id"},
                                   {"path": str(tmp_path / "customers.csv"), "key": "customer_id"}]
    assert m["events"]["columns"][S.ITEM_ID] == "product_id" and m["events"]["columns"][S.TS] == "order_purchase_timestamp"
    assert m["events"]["columns"][S.USER_ID] == "customer_unique_id"  # not the zip code, nor one id per order
    assert S.DESCRIPTION not in m["items"]["columns"]  # a description's length is no description
    r = IE.run(IE.ImportEventsConfig(mapping="auto", events=events, items=str(tmp_path / "products.csv"),
                                     output=str(tmp_path / "out")))
    assert r["events"] == 4 and r["items"] == 2 and r["rejected"] == {}
    users = pl.read_parquet(tmp_path / "out" / "events.parquet").get_column(S.USER_ID)
    assert sorted(users.unique()) == ["ann", "bob"]


def test_diginetica_s_day_and_milliseconds_into_the_session_order_a_session(tmp_path):
    """train-item-views.csv: eventdate holds the day only; timeframe the ms since the session began,
    which is all that orders a session's views (read alone, the day left them in hash order)."""
    m, text = _suggest(tmp_path, "sessionId;userId;itemId;timeframe;eventdate\n1;NA;81766;526309;2016-05-09\n"
                       "1;NA;31331;1031018;2016-05-09\n1;NA;32118;243569;2016-05-09\n", name="train-item-views.csv")
    assert m["events"]["columns"][S.TS] == ["eventdate", "timeframe"] and "ts_format" not in m["events"]
    assert m["events"]["constants"] == {S.EVENT_TYPE: "view"}
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    ev = pl.read_parquet(tmp_path / "out" / "events.parquet").sort(S.TS)
    assert ev[S.ITEM_ID].to_list() == ["32118", "81766", "31331"]
    assert str(ev[S.TS][0]) == "2016-05-09 00:04:03.569000+00:00"
    (tmp_path / "day_first").mkdir()  # the day as a spreadsheet writes it: read with ts_format, then offset
    m, _ = _suggest(tmp_path / "day_first", "sessionId;itemId;timeframe;eventdate\n1;81766;526309;09/05/2016\n"
                    "1;31331;1031018;09/05/2016\n2;32118;243569;25/05/2016\n", name="train-item-views.csv")
    assert m["events"]["columns"][S.TS] == ["eventdate", "timeframe"] and m["events"]["ts_format"] == "%d/%m/%Y"
    IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "day_first" / "m.yaml"), output=str(tmp_path / "out2")))
    ev = pl.read_parquet(tmp_path / "out2" / "events.parquet").sort(S.TS)
    assert [str(t) for t in ev[S.TS]] == ["2016-05-09 00:08:46.309000+00:00", "2016-05-09 00:17:11.018000+00:00",
                                          "2016-05-25 00:04:03.569000+00:00"]


def test_a_date_named_for_shipping_or_delivery_is_the_time_only_when_no_other_is_and_says_so(tmp_path):
    """Olist's order lines alone carry shipping_limit_date, a deadline days after the purchase; the
    guess took it silently. A column named for what came after the act now gives way to any other
    date, and where it is the only one a CHECK line says what it is."""
    (tmp_path / "a").mkdir()
    m, text = _suggest(tmp_path / "a", "delivery_date,purchase_date,customer,sku\n2024-03-09,2024-03-02,u1,p1\n")
    assert m["events"]["columns"][S.TS] == "purchase_date" and "named for what came after" not in text
    (tmp_path / "b").mkdir()
    m, text = _suggest(tmp_path / "b", "order_id,order_item_id,product_id,seller_id,shipping_limit_date,price\n"
                       "o1,1,p1,s1,2017-09-19 09:45:35,58.90\no2,1,p2,s1,2017-05-03 11:05:13,10.00\n")
    assert m["events"]["columns"][S.TS] == "shipping_limit_date"
    assert "the time is 'shipping_limit_date', named for what came after the shopper acted" in text
