"""Fill down: exports that write an order's fields on its first line only.

A report grouped by order (Shopify's orders export leaves most order-level fields blank on an
order's further line items; ERP and spreadsheet reports often print the order number, date and
customer once per group) gives every line after the first a blank time or customer, which would
quarantine those line items. `fill_down` (a mapping table's setting) names the shop columns whose
blank cells take the value above them, as a spreadsheet's fill down does; with `fill_down_by`, only
within a run of rows with the same value in that column (an order's id), so a guest order's blank
customer never takes the previous order's. The file is read in chunks: the last row of one chunk
carries into the next. A product catalog does the same (Shopify's products export writes the title,
description, vendor and type on a product's first row; its further variants and images leave them
blank). `guess_fill_down` finds the grouping column in a sample (`make mapping`).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from features.data.validate import SchemaError

FILL_SHARE_MIN = 0.05  # a share of rows with the key blank above which a grouping column is looked for


@dataclass
class FillGuess:
    share: float  # of the sampled rows with the key column blank
    columns: list[str]  # to fill down: the key and those of `also` blank somewhere ([] when nothing explains them)
    by: str | None  # the grouping column: never blank, repeating on exactly the rows with the key blank


def guess_fill_down(df: pl.DataFrame, key: str, mapped: list[str], also: list[str]) -> FillGuess | None:
    """Rows of a sample whose `key` (the events' time, the items' title) is blank because they
    continue the record above (an order's further line items, a product's further variants): the
    grouping column is one not in `mapped`, never blank, the same as the row above on every such row
    and changing on (nearly) every row that starts a record. None when few rows have `key` blank."""
    blank = _is_blank(pl.col(key), df.schema[key])
    blank = df.select(blank).to_series()
    share = float(blank.mean() or 0.0)
    if share <= FILL_SHARE_MIN:
        return None
    starts = ~blank & (pl.int_range(df.height, eager=True) > 0)
    for c in df.columns:
        col = df.get_column(c)
        if c in mapped or df.select(_is_blank(pl.col(c), col.dtype)).to_series().any():
            continue
        same = (col == col.shift(1)).fill_null(False)
        if (same | ~blank).all() and float((~same).filter(starts).mean() or 0.0) >= 0.9:
            blanks = [a for a in also if df.select(_is_blank(pl.col(a), df.schema[a])).to_series().any()]
            return FillGuess(share, [key, *blanks], c)
    return FillGuess(share, [], None)


class FillDown:
    def __init__(self, columns: tuple[str, ...], by: str | None, where: str) -> None:
        if by is not None and by in columns:
            raise SchemaError(f"{where}.fill_down_by: {by!r} is also in fill_down; the column that groups the "
                              "rows is not filled (leave fill_down_by out to fill it as well)")
        self.columns, self.by, self.where = tuple(columns), by, where
        self.last: pl.DataFrame | None = None  # the previous chunk's last row (filled)

    def __call__(self, chunk: pa.Table) -> pa.Table:
        if not self.columns:
            return chunk
        need = list(self.columns) + ([self.by] if self.by else [])
        missing = [c for c in need if c not in chunk.column_names]
        if missing:
            raise SchemaError(f"{self.where}.fill_down: column(s) {missing} are not in the file; the file has: "
                              + ", ".join(chunk.column_names))
        df = pl.from_arrow(chunk.select(need))
        assert isinstance(df, pl.DataFrame)
        blank = [pl.when(_is_blank(pl.col(c), df.schema[c])).then(None).otherwise(pl.col(c)).alias(c)
                 for c in self.columns]
        df = df.with_columns(blank)
        carried = self.last is not None and self.last.schema == df.schema
        if carried:
            df = pl.concat([self.last, df])
        if self.by:
            run = (pl.col(self.by) != pl.col(self.by).shift(1)).fill_null(True).cum_sum()
            df = df.with_columns([pl.col(c).forward_fill().over(run) for c in self.columns])
        else:
            df = df.with_columns([pl.col(c).forward_fill() for c in self.columns])
        if carried:
            df = df.slice(1)
        self.last = df.tail(1)
        for c in self.columns:
            chunk = chunk.set_column(chunk.column_names.index(c), c,
                                     df.get_column(c).to_arrow().cast(chunk.schema.field(c).type))
        return chunk


def _is_blank(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    return col.is_null() | (col.str.strip_chars() == "") if dtype == pl.String else col.is_null()
