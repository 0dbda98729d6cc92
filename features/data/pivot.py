"""Catalogs in long form: one row per item and property.

Some shops and trackers export their catalog as (item, property, value) rows rather than a row
per item: RetailRocket's `item_properties` (`timestamp, itemid, property, value`, with properties
such as `categoryid` and `available` written again whenever they change), an entity-attribute-
value table from an ERP or a PIM, a Magento attribute dump. Read as it is, every item would be
several items with one property each. `properties` (an items mapping's setting) names the
column holding the property's name (`key`) and the one holding its value (`value`); the rows are
turned into one row per item with a column per property name, which `columns` then maps like any
other column (`category: categoryid`, `in_stock: available`, `price: "790"`). Where an item has
the same property several times, the row latest by `latest_by` (a time column; nulls first) wins,
else the file's last; a blank value sets nothing. Only the property names the mapping uses become
columns, so a catalog with thousands of property names stays small.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from features.data.validate import SchemaError
from features.data.values import json_text

KEY_NAMES = ("property", "propertyname", "attribute", "attributename", "attributecode", "key", "field")
VALUE_NAMES = ("value", "propertyvalue", "attributevalue")
_ORDER = "\x1forder"


@dataclass(frozen=True)
class Properties:
    key: str  # the column naming the property (`property`)
    value: str  # the column holding its value (`value`)
    latest_by: str | None = None  # a time column: of an item's repeated property, the latest row wins


def pivot_properties(df: pl.DataFrame, p: Properties, item_col: str, where: str,
                     used: set[str] | None = None) -> pl.DataFrame:
    """(item, property, value) rows -> a row per item (in order of first appearance) with the
    item column and a column per property name found (only those in `used`, when given), values as
    text. An item none of whose properties is used keeps its row, with those columns blank."""
    need = {"key": p.key, "value": p.value, "latest_by": p.latest_by, "item id (columns.item_id)": item_col}
    for what, col in need.items():
        if col is not None and col not in df.columns:
            raise SchemaError(f"{where}.properties: the {what} column {col!r} is not in the file; it has: "
                              + ", ".join(df.columns))
    if item_col in (p.key, p.value):
        raise SchemaError(f"{where}.properties: the item id column {item_col!r} cannot also be the property "
                          f"{'name' if item_col == p.key else 'value'} column")
    key = pl.col(p.key).cast(pl.String).str.strip_chars()
    value = json_text(df.get_column(p.value)).cast(pl.String)
    rows = df.select(pl.col(item_col), key.alias(p.key), value.alias(p.value),
                     *([pl.col(p.latest_by)] if p.latest_by else []), pl.int_range(pl.len()).alias(_ORDER))
    items = rows.select(item_col).unique(maintain_order=True)
    keep = (pl.col(p.key).is_not_null() & (pl.col(p.key) != "") & pl.col(p.value).is_not_null()
            & (pl.col(p.value).str.strip_chars() != "") & pl.col(item_col).is_not_null() & (pl.col(p.key) != item_col))
    if used is not None:
        keep = keep & pl.col(p.key).is_in(sorted(used))
    rows = rows.filter(keep).sort([*([p.latest_by] if p.latest_by else []), _ORDER], nulls_last=False)
    if not rows.height:
        return items
    wide = rows.pivot(on=p.key, index=item_col, values=p.value, aggregate_function="last")
    return items.join(wide, on=item_col, how="left", nulls_equal=True, maintain_order="left")


def property_names(df: pl.DataFrame, p: Properties) -> list[str]:
    """The property names of a long catalog, in order of first appearance (what `columns` may map)."""
    names = df.get_column(p.key).cast(pl.String).str.strip_chars().drop_nulls().unique(maintain_order=True)
    return [n for n in names.to_list() if n]


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def find_properties(df: pl.DataFrame, item_col: str, ts_col: str | None) -> Properties | None:
    """A long catalog's `properties`, guessed from a sample: a property-name column and a value
    column by their names, where item ids repeat. None for a catalog with a row per item."""
    key = next((c for n in KEY_NAMES for c in df.columns if _norm(c) == n and c != item_col), None)
    value = next((c for n in VALUE_NAMES for c in df.columns if _norm(c) == n and c not in (item_col, key)), None)
    if key is None or value is None or df.get_column(item_col).n_unique() == df.height:
        return None
    return Properties(key=key, value=value, latest_by=ts_col)
