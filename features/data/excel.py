"""Excel workbooks (and OpenDocument sheets) as the import reads them."""

from __future__ import annotations

import warnings
from typing import Iterator

import pyarrow as pa

from features.data.validate import SchemaError

SOURCE_KEY = "intently.source"  # a read table's schema metadata: format, delimiter, file (\x1f between)


def sheet_names(fs, p: str) -> list[str]:
    """The workbook's sheets, in order."""
    return list(_book(fs, p).sheet_names)


def _book(fs, p: str):
    import fastexcel

    with fs.open_input_file(p) as f:
        data = f.read()
    try:
        return fastexcel.read_excel(data)
    except Exception as e:  # noqa: BLE001 - the reader raises its own error types
        raise SchemaError(f"{p}: not a workbook the Excel reader can open ({type(e).__name__}: {str(e)[:160]})") from None


def excel_tables(fs, p: str, chunk_rows: int, sheet: str | None = None) -> Iterator[pa.Table]:
    """Every sheet with the first data sheet's columns (UCI's one a year; others are skipped with a
    warning), or the one sheet named `sheet` (a workbook holding orders and products), each cell as
    the text Excel shows without its format (17850, 2.55, 2010-12-01 08:26:00), as a CSV export holds
    it. Read whole: the format cannot be streamed."""
    book = _book(fs, p)
    if sheet is not None and sheet not in book.sheet_names:
        raise SchemaError(f"sheet: {sheet!r} is not a sheet of {p}; it has: {', '.join(book.sheet_names)}")
    sent, header = False, None
    for name in [sheet] if sheet is not None else book.sheet_names:
        table = book.load_sheet(name, dtypes="string")
        if not table.width:
            continue
        table = pa.Table.from_batches([table.to_arrow()]).replace_schema_metadata({SOURCE_KEY: f"excel\x1f,\x1f{p}"})
        header = header or (name, table.column_names)
        if table.column_names != header[1]:
            warnings.warn(f"{p}: sheet {name!r} skipped: its columns are not sheet {header[0]!r}'s", stacklevel=2)
            continue
        for start in range(0, max(table.num_rows, 1), chunk_rows):
            yield table.slice(start, chunk_rows)
            sent = True
    if not sent:
        raise SchemaError(f"{p}: every sheet of the workbook is empty" if sheet is None else f"{p}: sheet {sheet!r} is empty")
