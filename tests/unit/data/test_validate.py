"""Validation: every bad-row kind is quarantined with its reason; schema errors fail loudly."""

from __future__ import annotations

import datetime as dt
import json
import math

import polars as pl
import pyarrow as pa
import pytest

from features.data import schema as S
from features.data.validate import SchemaError, ValidationConfig, split_duplicates, validate_events, validate_items
from tests.helpers import event, events_table, items_table, ts

CFG = ValidationConfig(now="2024-03-02T00:00:00Z", max_price=10_000, max_quantity=1_000)
CATALOG = pl.Series(S.ITEM_ID, ["i1", "i2"])
GOOD = event("good", 0, "u1")


def _reason_of(row: dict, catalog: pl.Series | None = CATALOG) -> str | None:
    ok, bad = validate_events(events_table([GOOD, row]), catalog, CFG)
    assert ok.height + bad.height == 2, "every row must land in exactly one output"
    assert "good" in ok.get_column(S.EVENT_ID).to_list()
    return bad.get_column(S.REASON).to_list()[0] if bad.height else None


@pytest.mark.parametrize(
    "row, reason",
    [
        (event(None, 1, "u1"), S.Reason.NULL_EVENT_ID),
        (event("  ", 1, "u1"), S.Reason.NULL_EVENT_ID),
        (event("e", 1, None), S.Reason.NULL_USER_ID),
        (event("e", 1, "u1", etype=None), S.Reason.NULL_EVENT_TYPE),
        (event("e", 1, "u1", etype="Purchase"), S.Reason.UNKNOWN_EVENT_TYPE),
        (event("e", 1, "u1", etype="wishlist"), S.Reason.UNKNOWN_EVENT_TYPE),
        (event("e", 60 * 24 * 2, "u1"), S.Reason.FUTURE_TS),
        (event("e", 1, "u1", etype="search", item=None, query=None), S.Reason.SEARCH_WITHOUT_QUERY),
        (event("e", 1, "u1", etype="search", item=None, query="   "), S.Reason.SEARCH_WITHOUT_QUERY),
        (event("e", 1, "u1", etype="view", item=None), S.Reason.MISSING_ITEM_ID),
        (event("e", 1, "u1", item="nope"), S.Reason.UNKNOWN_ITEM),
        (event("e", 1, "u1", price=-0.01), S.Reason.NEGATIVE_PRICE),
        (event("e", 1, "u1", price=10_001.0), S.Reason.ABSURD_PRICE),
        (event("e", 1, "u1", price=math.nan), S.Reason.ABSURD_PRICE),
        (event("e", 1, "u1", quantity=0), S.Reason.NON_POSITIVE_QUANTITY),
        (event("e", 1, "u1", quantity=-3), S.Reason.NON_POSITIVE_QUANTITY),
        (event("e", 1, "u1", quantity=1_001), S.Reason.ABSURD_QUANTITY),
    ],
)
def test_each_bad_row_kind_is_quarantined_with_its_reason(row, reason):
    assert _reason_of(row) == reason.value


def test_valid_rows_pass_including_search_without_item():
    assert _reason_of(event("e", 1, "u1", etype="search", item=None, query="red mug")) is None
    assert _reason_of(event("e", 1, "u1", etype="view", price=None, quantity=None)) is None


def test_null_ts_and_unparseable_ts_are_distinguished_and_raw_value_is_kept():
    schema = S.EVENTS_SCHEMA.set(S.EVENTS_SCHEMA.get_field_index(S.TS), pa.field(S.TS, pa.string()))
    rows = [dict(GOOD, ts="2024-03-01T12:00:00Z"), dict(event("e1", 0, "u1"), ts="yesterday"),
            dict(event("e2", 0, "u1"), ts=None)]
    ok, bad = validate_events(events_table(rows, schema), CATALOG, CFG)
    assert ok.get_column(S.TS).to_list() == [ts(0)]
    reasons = dict(zip(bad.get_column(S.EVENT_ID), bad.get_column(S.REASON)))
    assert reasons == {"e1": S.Reason.UNPARSEABLE_TS.value, "e2": S.Reason.NULL_TS.value}
    raw = json.loads(bad.filter(pl.col(S.EVENT_ID) == "e1").get_column(S.RAW).item())
    assert raw["ts"] == "yesterday", "the value that could not be typed must survive in raw"


def test_first_failing_check_wins_so_each_row_has_one_reason():
    row = event("e", 60 * 24 * 3, "u1", item="nope", price=-1.0)  # future, unknown item, negative price
    assert _reason_of(row) == S.Reason.FUTURE_TS.value


def test_unknown_item_check_is_skipped_without_catalog():
    assert _reason_of(event("e", 1, "u1", item="nope"), catalog=None) is None


def test_duplicate_event_ids_keep_the_earliest_and_quarantine_the_rest():
    rows = [event("d", 5, "u1", item="i2"), event("d", 1, "u1"), event("x", 2, "u2"), event("d", 9, "u3")]
    ok, bad = validate_events(events_table(rows), CATALOG, CFG)
    kept, dups = split_duplicates(ok)
    assert sorted(kept.get_column(S.EVENT_ID)) == ["d", "x"]
    assert kept.filter(pl.col(S.EVENT_ID) == "d").get_column(S.TS).item() == ts(1)
    assert dups.height == 2 and set(dups.get_column(S.REASON)) == {S.Reason.DUPLICATE_EVENT_ID.value}
    assert kept.height + dups.height == len(rows)


def test_lossless_coercions_are_applied():
    schema = pa.schema([(S.EVENT_ID, pa.int64()), (S.TS, pa.timestamp("ms")), (S.USER_ID, pa.int32()),
                        (S.EVENT_TYPE, pa.dictionary(pa.int8(), pa.string())), (S.ITEM_ID, pa.large_string()),
                        (S.QUANTITY, pa.int64()), (S.PRICE, pa.int32())])
    naive = dt.datetime(2024, 3, 1, 12, 0)
    table = pa.Table.from_pydict(
        {S.EVENT_ID: [7], S.TS: [naive], S.USER_ID: [42], S.EVENT_TYPE: ["view"], S.ITEM_ID: ["i1"],
         S.QUANTITY: [2], S.PRICE: [3]}, schema=schema)
    ok, bad = validate_events(table, CATALOG, CFG)
    assert bad.height == 0
    row = ok.row(0, named=True)
    assert row[S.EVENT_ID] == "7" and row[S.USER_ID] == "42" and row[S.PRICE] == 3.0
    assert row[S.TS] == ts(0), "naive timestamps are UTC"
    assert row[S.SESSION_ID] is None and row[S.QUERY] is None, "missing optional columns become null"


def test_missing_required_column_names_the_file_and_the_column():
    table = events_table([GOOD]).drop_columns([S.USER_ID])
    with pytest.raises(SchemaError, match=r"events\.parquet.*'user_id' missing.*required: event_id, ts, user_id, event_type"):
        validate_events(table, CATALOG, CFG, source="events.parquet")


@pytest.mark.parametrize("column, arrow_type, allowed", [
    (S.TS, pa.bool_(), "timestamp"), (S.QUANTITY, pa.string(), "integer"), (S.PRICE, pa.string(), "numeric"),
    (S.USER_ID, pa.float64(), "string"),
])
def test_mistyped_column_names_column_type_and_allowed_types(column, arrow_type, allowed):
    base = events_table([GOOD])
    idx = base.schema.get_field_index(column)
    table = base.set_column(idx, pa.field(column, arrow_type), pa.nulls(1, arrow_type))
    with pytest.raises(SchemaError, match=rf"column '{column}' has type .*allowed: .*{allowed}"):
        validate_events(table, CATALOG, CFG, source="f.parquet")


def test_items_validation_reasons_and_defaults():
    raw = items_table([("a", "A mug"), ("b", ""), ("", "no id"), ("a", "dup of a"), ("c", "C")], prices={"c": -1.0})
    raw = raw.set_column(raw.schema.get_field_index(S.IN_STOCK), pa.field(S.IN_STOCK, pa.bool_()),
                         pa.array([None, True, True, True, True]))
    ok, bad = validate_items(raw, CFG)
    assert ok.get_column(S.ITEM_ID).to_list() == ["a"]
    assert ok.get_column(S.IN_STOCK).to_list() == [True], "null in_stock defaults to true"
    assert sorted(bad.get_column(S.REASON)) == sorted([
        S.Reason.MISSING_TITLE.value, S.Reason.NULL_ITEM_ID.value, S.Reason.DUPLICATE_ITEM_ID.value,
        S.Reason.NEGATIVE_PRICE.value])


def test_items_duplicate_is_judged_among_valid_rows():
    ok, bad = validate_items(items_table([("a", ""), ("a", "Real title")]), CFG)
    assert ok.get_column(S.TITLE).to_list() == ["Real title"]
    assert bad.get_column(S.REASON).to_list() == [S.Reason.MISSING_TITLE.value]


def test_items_lose_their_html_markup_before_a_title_is_judged():
    """A Shopify "Body (HTML)" description, an eBay listing's styles, entities: the feature job and
    serving's PUT both read the text without them (one expression; the API's twin is checked)."""
    from features.data.text import strip_markup
    from serving.schemas import ItemIn

    desc = ('<style>.s1 {color: red}</style><p>Soft <b>cotton</b> tee&nbsp;&amp; more</p>\n<ul><li>Size M'
            '</li></ul><!-- hidden --><script>track()</script>It&#8217;s &lt;b&gt; 5 < 6 &#x2603;')
    raw = items_table([("a", "Tee &amp; socks"), ("b", "<p> </p>"), ("c", "Plain\n\ntitle  ")])
    raw = raw.set_column(raw.schema.get_field_index(S.DESCRIPTION), pa.field(S.DESCRIPTION, pa.string()),
                         pa.array([desc, None, "Line one\nline two"]))
    ok, bad = validate_items(raw, CFG)
    a, c = ok.row(0, named=True), ok.row(1, named=True)
    assert a[S.TITLE] == "Tee & socks"
    assert a[S.DESCRIPTION] == "Soft cotton tee & more Size M It's <b> 5 < 6"  # escaped text stays text
    assert (c[S.TITLE], c[S.DESCRIPTION]) == ("Plain\n\ntitle  ", "Line one\nline two")  # no markup: untouched
    assert bad.get_column(S.REASON).to_list() == [S.Reason.MISSING_TITLE.value]  # only markup: no title
    assert json.loads(bad.get_column(S.RAW)[0])[S.TITLE] == "<p> </p>"  # the row as it came
    assert strip_markup({S.DESCRIPTION: desc})[S.DESCRIPTION] == a[S.DESCRIPTION]
    item = ItemIn(title="Tee &amp; socks", description=desc)
    assert (item.title, item.description) == ("Tee & socks", a[S.DESCRIPTION])
    with pytest.raises(ValueError, match="title must not be blank"):
        ItemIn(title="<p> </p>")
