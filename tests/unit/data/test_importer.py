"""The UCI Online Retail importer on hand-built lines and on the bundled file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from features.data import schema as S
from features.data.online_retail import REASON_NON_PRODUCT, REASON_STOCK_ADJUSTMENT, import_online_retail

ROOT = Path(__file__).resolve().parents[3]


def raw(rows):
    cols = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
    return pl.DataFrame([dict(zip(cols, r)) for r in rows],
                        schema={"InvoiceNo": pl.String, "StockCode": pl.String, "Description": pl.String,
                                "Quantity": pl.Int64, "InvoiceDate": pl.Datetime("ns"), "UnitPrice": pl.Float64,
                                "CustomerID": pl.Float64, "Country": pl.String})


D = dt.datetime(2011, 1, 5, 10, 30)
ROWS = [
    ("536365", "85123A", "WHITE HEART", 6, D, 2.55, 17850.0, "UK"),
    ("536365", "85123A", "WHITE HEART", 6, D, 2.55, 17850.0, "UK"),       # identical repeated line
    ("536366", "85123A", "white heart  ", 2, D, 2.60, None, "UK"),          # anonymous
    ("536367", "85123A", "WHITE HEART", 1, D, 2.40, 12.0, "FR"),
    ("C536368", "85123A", "WHITE HEART", -3, D, 2.55, 17850.0, "UK"),      # cancellation
    ("536369", "POST", "POSTAGE", 1, D, 18.0, 12.0, "FR"),                  # not merchandise
    ("536370", "22000", "damaged", -10, D, 0.0, None, "UK"),               # stock write-off
    ("536371", "22000", "PAPER CUP", 4, D, 0.5, 12.0, "FR"),
]


def test_mapping_choices():
    events, items, rejected = import_online_retail(raw(ROWS))
    assert events.height + rejected.height == len(ROWS)
    assert dict(zip(rejected.get_column("StockCode"), rejected.get_column(S.REASON))) == {
        "POST": REASON_NON_PRODUCT, "22000": REASON_STOCK_ADJUSTMENT}
    by_id = {r[S.EVENT_ID]: r for r in events.iter_rows(named=True)}
    assert set(by_id) == {"536365:0", "536365:1", "536366:0", "536367:0", "C536368:0", "536371:0"}
    assert by_id["536365:0"][S.USER_ID] == "c17850" and by_id["536365:0"][S.SESSION_ID] == "536365"
    assert by_id["536366:0"][S.USER_ID] == "anon:536366"
    ret = by_id["C536368:0"]
    assert (ret[S.EVENT_TYPE], ret[S.QUANTITY]) == ("return", 3)
    assert by_id["536365:0"][S.TS] == D.replace(tzinfo=dt.timezone.utc)
    it = {r[S.ITEM_ID]: r for r in items.iter_rows(named=True)}
    assert it["85123A"][S.TITLE] == "WHITE HEART", "the most frequent description (whitespace-normalised)"
    assert it["85123A"][S.PRICE] == pytest.approx(2.55), "median of purchase prices, returns excluded"
    assert it["22000"][S.TITLE] == "PAPER CUP", "titles come from priced lines, not write-off notes"


def test_missing_raw_column_is_named():
    with pytest.raises(ValueError, match=r"\['CustomerID'\] missing"):
        import_online_retail(raw(ROWS).drop("CustomerID"))


def test_bundled_file_accounts_for_every_line():
    df = pl.read_parquet(ROOT / "data" / "online_retail.parquet")
    events, items, rejected = import_online_retail(df)
    assert df.height == 541_909
    assert events.height + rejected.height == df.height
    assert events.get_column(S.EVENT_ID).is_unique().all()
    assert set(events.get_column(S.ITEM_ID)) <= set(items.get_column(S.ITEM_ID))
    assert items.get_column(S.TITLE).null_count() == 0
    assert events.filter(pl.col(S.EVENT_TYPE) == "return").height > 5_000
