"""Importing Excel workbooks: the UCI Online Retail II distribution (.xlsx, one sheet a year) and a
shop's spreadsheet through a mapping, read as the text a CSV export would hold."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
import xlsxwriter

from features.data import schema as S
from features.data.reading import iter_tables, read_table
from features.data.validate import SchemaError
from jobs import import_events as IE

HEADER = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"]
SHEETS = {
    "Year 2009-2010": [("489434", 85048, "15CM CHRISTMAS GLASS BALL 20 LIGHTS", 12, dt.datetime(2009, 12, 1, 7, 45),
                        6.95, 13085, "United Kingdom"),
                       ("C489449", 22087, "PAPER BUNTING WHITE LACE", -12, dt.datetime(2009, 12, 1, 10, 33), 2.95,
                        16321, "Australia")],
    "Year 2010-2011": [(536365, "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, dt.datetime(2010, 12, 1, 8, 26),
                        2.55, 17850, "United Kingdom"),
                       (536366, "00123", "RED MUG", 1, dt.datetime(2010, 12, 1, 8, 28), 1.85, None, "France")],
}


def _workbook(path, sheets=SHEETS, header=HEADER) -> None:
    """Cells typed as Excel holds them: numbers as numbers, times as dates, codes with letters as text."""
    wb = xlsxwriter.Workbook(str(path))
    when = wb.add_format({"num_format": "m/d/yy h:mm"})
    for name, rows in sheets.items():
        ws = wb.add_worksheet(name)
        ws.write_row(0, 0, header)
        for i, row in enumerate(rows, 1):
            for j, v in enumerate(row):
                if isinstance(v, dt.datetime):
                    ws.write_datetime(i, j, v, when)
                elif isinstance(v, (int, float)):
                    ws.write_number(i, j, v)
                elif v is not None:
                    ws.write_string(i, j, v)
    wb.add_worksheet("notes")  # an empty sheet is skipped
    wb.add_worksheet("summary").write_row(0, 0, ["Year", "Revenue"])  # and one with other columns (a warning)
    wb.close()


def _csv(path) -> None:
    lines = [",".join(HEADER)]
    for rows in SHEETS.values():
        for r in rows:
            lines.append(",".join("" if v is None else v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, dt.datetime)
                                  else f'"{v}"' if isinstance(v, str) and "," in v else str(v) for v in r))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.filterwarnings("ignore:.*sheet 'summary' skipped")
def test_the_uci_online_retail_ii_workbook_imports_as_its_csv_does(tmp_path):
    _workbook(tmp_path / "online_retail_II.xlsx")
    _csv(tmp_path / "online_retail_II.csv")
    out = {}
    with pytest.warns(UserWarning, match=r"online_retail_II.xlsx: sheet 'summary' skipped: its columns are not "
                                         r"sheet 'Year 2009-2010''s"):
        read_table(str(tmp_path / "online_retail_II.xlsx"))
    for name in ("online_retail_II.xlsx", "online_retail_II.csv"):
        IE.run(IE.ImportEventsConfig(mapping="uci-online-retail", events=str(tmp_path / name), output=str(tmp_path / name[-4:])))
        out[name] = pl.read_parquet(tmp_path / name[-4:] / "events.parquet")
    xlsx, csv = out["online_retail_II.xlsx"], out["online_retail_II.csv"]
    assert xlsx.height == 4 and xlsx.equals(csv)  # both sheets; every value as the CSV holds it
    assert xlsx.filter(pl.col(S.SESSION_ID) == "536366")[S.ITEM_ID].to_list() == ["00123"]  # a code kept as written
    assert xlsx.filter(pl.col(S.SESSION_ID) == "536365")[S.USER_ID].to_list() == ["c17850"]  # 17850, not 17850.0
    assert str(xlsx.filter(pl.col(S.SESSION_ID) == "489434")[S.TS][0]) == "2009-12-01 07:45:00+00:00"


@pytest.mark.filterwarnings("ignore:.*sheet 'summary' skipped")
def test_a_shops_spreadsheet_maps_like_any_export_and_a_bad_workbook_is_named(tmp_path):
    _workbook(tmp_path / "orders.xlsx", {"orders": [("u1", 101, dt.datetime(2024, 3, 1, 10), "2"),
                                                    ("u2", "A-7", dt.datetime(2024, 3, 2, 11), "two")]},
              ["customer", "sku", "ordered at", "qty"])
    (tmp_path / "items.csv").write_text("sku,name\n101,Red mug\nA-7,Blue lamp\n")
    (tmp_path / "m.yaml").write_text("""events:
  path: orders.xlsx
  columns: {user_id: customer, item_id: sku, ts: ordered at, quantity: qty}
  constants: {event_type: purchase}
items:
  path: items.csv
  columns: {item_id: sku, title: name}
""")
    r = IE.run(IE.ImportEventsConfig(mapping=str(tmp_path / "m.yaml"), output=str(tmp_path / "out")))
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert r["raw_rows"]["events"] == 2 and events.select(S.ITEM_ID, S.QUANTITY).rows() == [("101", 2), ("A-7", None)]
    assert r["rejected"] == {} and r["blanked"] == {"events": {"unparseable_quantity": 1}}
    (tmp_path / "broken.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(SchemaError, match=r"broken.xlsx: not a workbook the Excel reader can open"):
        read_table(str(tmp_path / "broken.xlsx"))
    with pytest.raises(SchemaError, match=r"explode: 'items'; only JSON and Parquet files hold lists, .*orders.xlsx is excel"):
        read_table(str(tmp_path / "orders.xlsx"), explode="items")


def _shop_book(path) -> None:
    """A small shop's one workbook: a summary, its orders and its products, each on a sheet."""
    wb = xlsxwriter.Workbook(str(path))
    when = wb.add_format({"num_format": "yyyy-mm-dd hh:mm"})
    wb.add_worksheet("Summary").write_row(0, 0, ["Total", "Orders"])
    ws = wb.add_worksheet("Orders")
    ws.write_row(0, 0, ["Order", "Date", "Customer", "SKU", "Qty"])
    for i, (o, d, c, sku, q) in enumerate([("A1", 1, "c1", "MUG", 2), ("A2", 2, "c2", "LAMP", 1)], 1):
        ws.write_row(i, 0, [o]), ws.write_datetime(i, 1, dt.datetime(2024, 3, d, 10), when), ws.write_row(i, 2, [c, sku, q])
    ws = wb.add_worksheet("Products")
    ws.write_row(0, 0, ["SKU", "Product name", "Price"])
    ws.write_row(1, 0, ["MUG", "Red enamel mug", 4.5])
    ws.write_row(2, 0, ["LAMP", "Desk lamp", 25])
    wb.close()


def test_one_workbook_of_orders_and_products_imports_in_one_command(tmp_path):
    _shop_book(tmp_path / "shop.xlsx")
    r = IE.run(IE.ImportEventsConfig(mapping="auto", events=str(tmp_path / "shop.xlsx"), output=str(tmp_path / "out")))
    assert r["events"] == 2 and r["items"] == 2 and not r["items_from_events"]
    guess = (tmp_path / "out" / "mapping.yaml").read_text()
    assert "sheet: Orders" in guess and "sheet: Products" in guess
    items = pl.read_parquet(tmp_path / "out" / "items.parquet").sort(S.ITEM_ID)
    assert items.select(S.ITEM_ID, S.TITLE, S.PRICE).rows() == [("LAMP", "Desk lamp", 25.0), ("MUG", "Red enamel mug", 4.5)]
    with pytest.raises(SchemaError, match=r"sheet: 'Order' is not a sheet of .*shop.xlsx; it has: Summary, Orders, Products"):
        list(iter_tables(str(tmp_path / "shop.xlsx"), sheet="Order"))
    (tmp_path / "e.csv").write_text("a\n1\n")
    with pytest.raises(SchemaError, match=r"sheet: 'Orders'; only an Excel workbook has sheets, .*e.csv is csv"):
        list(iter_tables(str(tmp_path / "e.csv"), sheet="Orders"))
