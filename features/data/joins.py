"""Relational exports: a table's rows take the columns of other tables by a key.

Many shops and public data sets keep an order's lines, the order and the customer in separate
tables (Olist: order_items -> orders by order_id -> customers by customer_id, where the shopper is
customers.customer_unique_id and the time orders.order_purchase_timestamp; Instacart: order
products -> orders). `join` (a mapping table's setting) lists the tables to look up, in order,
each with the key column it shares with what came before (`key`); their other columns can then be
mapped like the file's own. A looked-up table is read whole (an orders or customers table is small
next to the lines) and must hold one row per key: a key twice would copy the lines it matches, so
that stops the import naming the key. A line whose key is in no row keeps its own columns and
blanks for the table's (the import's checks then say what is missing, as for any blank).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from features.data.reading import iter_tables
from features.data.validate import SchemaError

_KEY = "\x1fkey"  # the key as text on both sides (an id read as a number in one file, as text in the other)


@dataclass(frozen=True)
class Join:
    path: str  # the table to look up: file, folder or URI, any format the import reads
    key: str  # the key column it shares with the rows so far (order_id); not "on": YAML reads that as true
    format: str = "auto"
    delimiter: str | None = None
    encoding: str = "utf-8"


class Joiner:
    """The tables of `joins`, read once; called on each chunk of the file they extend."""

    def __init__(self, joins: tuple[Join, ...], where: str) -> None:
        self.where, self.tables = where, []
        for k, j in enumerate(joins):
            try:
                parts = list(iter_tables(j.path, j.format, j.delimiter, j.encoding, f"{where}.join[{k}].encoding",
                                         chunk_rows=1 << 62))
            except FileNotFoundError as e:
                raise SchemaError(f"{where}.join[{k}].path: {e}") from None
            df = pl.from_arrow(pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0])
            assert isinstance(df, pl.DataFrame)
            if j.key not in df.columns:
                raise SchemaError(f"{where}.join[{k}].key: {j.key!r} is not a column of {j.path}; it has: "
                                  + ", ".join(df.columns))
            df = df.with_columns(pl.col(j.key).cast(pl.String).str.strip_chars())
            twice = df.filter(pl.col(j.key).is_duplicated() & pl.col(j.key).is_not_null())
            if twice.height:
                raise SchemaError(f"{where}.join[{k}]: {j.path} has {twice.height:,} rows sharing a {j.key!r} (e.g. "
                                  f"{twice[j.key][0]!r}); a looked-up table needs one row per key, or each line "
                                  "matching it would be copied")
            self.tables.append((k, j, df))

    def __call__(self, chunk: pa.Table) -> pa.Table:
        if not self.tables:
            return chunk
        df = pl.from_arrow(chunk)
        assert isinstance(df, pl.DataFrame)
        for k, j, table in self.tables:
            if j.key not in df.columns:
                raise SchemaError(f"{self.where}.join[{k}].key: {j.key!r} is not a column of the rows it extends; they "
                                  "have: " + ", ".join(df.columns))
            extra = table.select([j.key, *(c for c in table.columns if c not in df.columns)]).rename({j.key: _KEY})
            df = (df.with_columns(pl.col(j.key).cast(pl.String).str.strip_chars().alias(_KEY))
                  .join(extra, on=_KEY, how="left", maintain_order="left").drop(_KEY))
        return df.to_arrow()

    def person(self, key: object, is_user) -> str | None:
        """Of the table looked up by `key` (customers, by an order's customer_id), another column that
        names a shopper (`is_user(column)`): Olist's customer_unique_id, the person behind the
        customer_id each order gets anew."""
        return next((c for _, j, t in self.tables if j.key == key for c in t.columns if c != key and is_user(c)), None)

    @property
    def columns(self) -> list[str]:
        """Every looked-up table's columns (what a mapping may name besides the file's own)."""
        return [c for _, _, t in self.tables for c in t.columns]


def find_joins(samples: list[tuple[str, pl.DataFrame | None]], names_items) -> tuple[list[str], list[dict]]:
    """Of several files' samples (path, first rows), in the order given: the event files, and the
    `join` of the first (`make mapping`). A later file that names no item (`names_items(columns)`
    false) and shares a column with the files before it, one row per value of that column in its
    sample, is a table to look up (an orders table beside the order lines, its customers); any
    other is a further events file (clicks, then buys)."""
    if len(samples) < 2:
        return [p for p, _ in samples], []
    events, joins, seen = [samples[0][0]], [], list(samples[0][1].columns)  # type: ignore[union-attr]
    for path, df in samples[1:]:
        assert df is not None
        key = None if names_items(df.columns) else next(
            (c for c in df.columns if c in seen and df.get_column(c).drop_nulls().n_unique() == df.height), None)
        if key is None:
            events.append(path)
        else:
            joins.append({"path": path, "key": key})
            seen += [c for c in df.columns if c not in seen]
    return events, joins
