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

A catalog may instead name each variation's parent (WooCommerce's product export: a variation row's
`Parent` is `id:15`, the variable product's `ID`, and its description and categories are blank, so a
category filter missed every variation). `parent` (an items mapping's setting) names that column
and the one it refers to; `inherit` gives a row the parent's text where its own is blank.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from features.data.validate import SchemaError

PARENT_NAMES = ("parent", "parentid", "parentsku", "parentproductid", "parentitemid")
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


@dataclass(frozen=True)
class Parent:
    column: str  # the column naming a row's parent row: its id ("id:15" reads as 15) or its item id
    id: str | None = None  # the column the reference names (WooCommerce's ID); none: the item id column


def inherit(raw: pa.Table, p: Parent, item_col: str, columns: list[str], where: str) -> pa.Table:
    """Each row naming a parent takes the parent row's value of each of `columns` where its own is
    blank. A reference is looked up as the parent's `id` first (a leading "id:" dropped), then as its
    item id; a reference to no row changes nothing."""
    missing = [c for c in (p.column, p.id) if c is not None and c not in raw.column_names]
    if missing:
        raise SchemaError(f"{where}.parent: column(s) {missing} are not in the file; the file has: "
                          + ", ".join(raw.column_names))
    df = pl.from_arrow(raw)
    assert isinstance(df, pl.DataFrame)
    cols = [c for c in dict.fromkeys(columns) if c in df.columns and c != p.column]
    ref, key = "\x1fref", lambda c: pl.col(c).cast(pl.String).str.strip_chars()
    out = df.with_columns(key(p.column).str.replace(r"^id:", "").alias(ref))
    for by in dict.fromkeys([c for c in (p.id, item_col) if c is not None]):
        parents = (df.select(key(by).alias(ref), *[pl.col(c).alias(c + ref) for c in cols])
                   .filter(pl.col(ref).is_not_null() & (pl.col(ref) != "")).unique(ref, keep="first", maintain_order=True))
        out = out.join(parents, on=ref, how="left", maintain_order="left").with_columns(
            pl.when(_is_blank(pl.col(c), df.schema[c])).then(pl.col(c + ref)).otherwise(pl.col(c)).alias(c) for c in cols)
        out = out.drop([c + ref for c in cols])
    return out.drop(ref).to_arrow().cast(raw.schema)


def find_parent(df: pl.DataFrame, item_col: str, taken: set) -> dict | None:
    """`parent` guessed from a sample (`make mapping`): a column named so, not in `taken`, whose
    references ("id:15" read as 15) are mostly the rows' `id` column's values, or else item ids."""
    col = next((c for c in df.columns if re.sub(r"[^0-9a-z]", "", c.lower()) in PARENT_NAMES and c not in taken), None)
    ref = pl.Series([], dtype=pl.String) if col is None else df.get_column(col).cast(pl.String).str.strip_chars()
    ref = ref.str.replace(r"^id:", "").filter(ref.is_not_null() & (ref != ""))
    for c in [c for c in df.columns if re.sub(r"[^0-9a-z]", "", c.lower()) == "id"] + [item_col]:
        if ref.len() and float(ref.is_in(df.get_column(c).cast(pl.String).implode()).mean() or 0) >= 0.5:
            return {"column": col, **({"id": c} if c != item_col else {})}
    return None


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
