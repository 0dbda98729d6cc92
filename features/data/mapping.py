"""A shop's own export -> the canonical events and items tables, through a column mapping.

A mapping (YAML, see docs/data.md) names, per table, where the shop's file is, its format, and
which shop column feeds each canonical column:

    events:
      path: s3://shop/exports/events.csv      # file, folder or URI; overridable per run
      format: csv                             # auto | parquet | csv | tsv | json | excel | recbole
      columns: {user_id: visitorid, item_id: itemid, ts: timestamp, event_type: event}
      values: {event_type: {addtocart: add_to_cart, transaction: purchase}}
      ts_unit: ms                             # numeric timestamps: s | ms | us | ns | auto
    items:
      path: s3://shop/exports/items.parquet   # no path: the items come from the events file (below)
      columns: {item_id: itemid, title: [brand, name], category: categoryid}

Rules, so that nothing accepted is ever lost:
- A mapped shop column that is not in the file stops the import with an error naming the mapping
  key, the column and the columns the file has.
- A time that cannot be read ("yesterday") rejects its event: the row goes to `rejected` with the
  reason `unparseable_ts` and the original row as JSON, next to the canonical tables. Any other
  value that cannot be typed (a quantity "two", a price "call us") is left blank and the row is
  kept, its original in `blanked` with the reason `unparseable_<column>`: an item is not lost for
  its price. Prices and quantities are read as shops write them (`$12.99`, `1,234.56`, `EUR 12,99`
  with `decimal_separator: ","`), text columns' lists as text (features/data/values.py).
  Everything else (unknown event types, future timestamps, duplicates, ...) is the feature job's
  validation, with its quarantine and messages.
- Without an event_id column, each event gets a stable one: a hash of its user, time, type and
  item, plus its position among identical lines (so repeated identical lines stay distinct).
- A text column (title, description, category, brand) may name several shop columns: their
  values joined by a space, blanks skipped (a category's by " > ", a path: department > type).
  The time's two are a date and a time of day or a whole-number offset in ts_unit (ms when auto:
  Diginetica's eventdate and timeframe). Any other column may name several: the
  first non-blank (a tracker's `properties.product_id` on views, `...products.product_id` on orders).
- Nested records are flattened to dotted names, `explode` makes a list's elements rows and
  `key_values` a list of key/value pairs columns (features/data/reading.py); an exploded row's
  event id is its record's plus ":<position>" (or the element's own, when mapped from it).
  A JSON record may leave a mapped field out (blank there); a field in no record stops the import.
- Items without a path of their own are read from the events file, whose rows carry the item's
  fields (as many shops' event exports do): one item per id, each field its latest non-blank value
  by event time; `created_at` the item's first event unless mapped. Rows without an item id
  (searches) are not item rows.
- `category_separator`, `category_list_separator`, `category_root`: one path "A > B" per item
  (categories.py);
  `properties` turns a long catalog (item, property, value rows) into a row per item (pivot.py);
  `parent` fills a variation's blank text from its parent row (fill.py).
- `negative_quantity: return` makes an event line with a negative quantity a return of that many
  units (tills and ERPs write a return so); by default the feature job quarantines it.
- RecBole atomic files (`.inter`, `.item`) lose their headers' `:type`; `recbole_defaults` names them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl
import pyarrow as pa

from features import artifacts as A
from features.data import schema as S
from features.data.categories import check as check_category
from features.data.categories import one_path
from features.data.event_ids import EventIds
from features.data.fill import Parent
from features.data.joins import Join
from features.data.pivot import Properties
from features.data.reading import check_encoding, text_source
from features.data.sniff import column_hint
from features.data.validate import SchemaError
from features.data.values import (
    DECIMAL_SEPARATORS,
    TEXT_COLUMNS,
    joined_text,
    json_text,
    list_text,
    time_text,
    typed,
    typed_ts,
)

FORMATS = ("auto", "parquet", "csv", "tsv", "json", "excel", "recbole")
TS_UNITS = ("auto", "s", "ms", "us", "ns")
NEGATIVE_QUANTITY = ("quarantine", "return")  # an event with quantity < 0: the feature job's quarantine, or a return
EVENT_COLUMNS = tuple(S.EVENTS_SCHEMA.names)
ITEM_COLUMNS = tuple(S.ITEMS_SCHEMA.names)
REASON_UNPARSEABLE = "unparseable_{}"
KEPT = "kept"  # in the rows apply() reports: imported with the unreadable value blank (True) or rejected
JOINABLE = TEXT_COLUMNS  # may be built from several shop columns
REJECTING = (S.TS,)  # an event without a time cannot be placed: its row is rejected; any other unreadable value is blanked
_KEY, _TS, _N, _FIRST = "\x1fitem", "\x1fts", "\x1fn", "\x1ffirst"  # item_fields' working columns


@dataclass(frozen=True)
class TableMapping:
    """How one shop table becomes a canonical one. `columns`: canonical name -> shop column; `constants`:
    canonical name -> a value for every row; `values`: canonical name -> {shop value: canonical value} (event
    types); `ts_format`: a strftime pattern for non-ISO times; `encoding`: the text's character set."""

    path: str | None = None
    format: str = "auto"
    columns: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    ts_unit: str = "auto"
    ts_format: str | None = None
    delimiter: str | None = None
    encoding: str = "utf-8"
    decimal_separator: str = "."  # of prices and quantities: "," for 12,99 (then 1.234,56 is read too)
    category_separator: str | None = None  # the shop's category path separator ("." or "/"): becomes " > "
    category_list_separator: str | None = None  # items: "," keeps the deepest of "Clothing > Hoodies, Clothing"
    category_root: str | None = None  # items: a first level every path has ("Default Category"): dropped
    explode: str | None = None  # a list column (JSON, Parquet) whose elements become rows: an order's products
    key_values: str | None = None  # a list of {key, value} records (GA4's event_params): a column per key
    column_names: tuple[str, ...] | None = None  # a CSV/TSV file without a header row: its columns' names
    fill_down: tuple[str, ...] = ()  # shop columns whose blank cells take the value above (features/data/fill.py)
    fill_down_by: str | None = None  # ... only within a run of rows with the same value here (an order's id)
    properties: Properties | None = None  # items: a long catalog's property-name and value columns (pivot.py)
    negative_quantity: str = "quarantine"  # events: "return" makes a line of -2 units a return of 2
    parent: Parent | None = None  # items: a variation's parent row, whose text fills its blanks (fill.py)
    join: tuple[Join, ...] = ()  # tables whose columns the rows take by a key: orders, customers (joins.py)
    sheet: str | None = None  # an Excel workbook's sheet to read (orders and products in one book); none: all


@dataclass(frozen=True)
class Mapping:
    events: TableMapping = field(default_factory=TableMapping)
    items: TableMapping = field(default_factory=TableMapping)
    more_events: tuple[TableMapping, ...] = ()  # `events: [a, b, ...]` in YAML: b, ... (clicks, then orders)


def recbole_defaults(inter: str | None, item: str | None) -> Mapping:
    """The usual RecBole field names: user_id, item_id, timestamp (seconds) in `.inter`; a title
    from title / movie_title / name in `.item`. An interaction is taken as a purchase."""
    return Mapping(
        events=TableMapping(path=inter, format="recbole", columns={S.USER_ID: "user_id", S.ITEM_ID: "item_id",
                                                                   S.TS: "timestamp"},
                            constants={S.EVENT_TYPE: S.EventType.PURCHASE.value}, ts_unit="s"),
        items=TableMapping(path=item, format="recbole", columns={S.ITEM_ID: "item_id"}),
    )


def check_mapping(m: TableMapping, table: str, name: str | None = None) -> None:
    """`table`: events or items; `name`: its key in the mapping for messages (events[1]: a further file)."""
    allowed = EVENT_COLUMNS if table == "events" else ITEM_COLUMNS
    where = f"mapping.{name or table}"
    if m.format not in FORMATS:
        raise SchemaError(f"{where}.format: {m.format!r}; allowed: {', '.join(FORMATS)}")
    if m.ts_unit not in TS_UNITS:
        raise SchemaError(f"{where}.ts_unit: {m.ts_unit!r}; allowed: {', '.join(TS_UNITS)}")
    check_encoding(m.encoding, f"{where}.encoding")
    if m.decimal_separator not in DECIMAL_SEPARATORS:
        raise SchemaError(f"{where}.decimal_separator: {m.decimal_separator!r}; allowed: "
                          + ", ".join(repr(d) for d in DECIMAL_SEPARATORS))
    for part in ("columns", "constants", "values"):
        unknown = sorted(set(getattr(m, part)) - set(allowed))
        if unknown:
            raise SchemaError(f"{where}.{part}: unknown canonical column(s) {unknown}; allowed: {', '.join(allowed)}")
    for k, v in m.columns.items():
        if isinstance(v, tuple) and not v:
            raise SchemaError(f"{where}.columns.{k}: an empty list; name a column (or several: text columns join "
                              "them, others take the first non-blank)")
    if m.column_names is not None and (not m.column_names or len(set(m.column_names)) < len(m.column_names)):
        raise SchemaError(f"{where}.column_names: {list(m.column_names)}; a list of distinct names, one per column of "
                          "the file, in order (for a CSV or TSV file without a header row)")
    if m.negative_quantity not in NEGATIVE_QUANTITY or (m.negative_quantity == "return" and table != "events"):
        raise SchemaError(f"{where}.negative_quantity: {m.negative_quantity!r}; allowed: "
                          f"{', '.join(NEGATIVE_QUANTITY)} (return: events only)")
    for key in ("properties", "parent"):
        if getattr(m, key) is not None and (table != "items" or not isinstance(m.columns.get(S.ITEM_ID), str)):
            raise SchemaError(f"{where}.{key}: only for an items file, with one column as columns.item_id")
    check_category(where, table, m.category_separator, m.category_list_separator, m.category_root)
    if table == "items" and m.columns and S.TITLE not in m.columns and S.TITLE not in m.constants:
        raise SchemaError(f"{where}.columns.title: required (the text search and the encoder read it); a column, or "
                          "a list of columns joined by a space, e.g. title: [brand, category_code]; a catalog with no "
                          "text may map its item id (title: itemid): item-ID embeddings and co-occurrence still "
                          "learn, text search then matches ids only")
    both = sorted(set(m.columns) & set(m.constants))
    if both:
        raise SchemaError(f"{where}: {both} both mapped to a column and set to a constant; choose one")
    if not m.path:
        raise SchemaError(f"{where}.path: no input file given")


def _first(src: pl.DataFrame, names: tuple[str, ...]) -> pl.Series:  # per row, the first non-blank column
    parts = [pl.when(pl.col(n).cast(pl.String).str.strip_chars() != "").then(pl.col(n).cast(pl.String)) for n in names]
    return src.select(pl.coalesce(parts).alias(names[0])).to_series()


def _mapped(raw: pa.Table, m: TableMapping, table: str,
            name: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(every row mapped and typed, per typed column whether a present value could not be typed,
    the source rows)."""
    check_mapping(m, table, name)
    source = text_source(raw)
    absent = []
    for k, spec in m.columns.items():
        for v in (spec,) if isinstance(spec, str) else spec:
            if v not in raw.column_names and source is not None and source[0] == "json":
                absent.append(v)  # left out by this chunk's records; import_events checks the whole file has it
            elif v not in raw.column_names:
                raise SchemaError(f"mapping.{name or table}.columns.{k}: column {v!r} is not in {m.path}; "
                                  f"the file has: {', '.join(raw.column_names)}{column_hint(table, raw.column_names)}")
    src = pl.from_arrow(raw)
    assert isinstance(src, pl.DataFrame)
    src = src.with_columns(pl.lit(None, pl.String).alias(v) for v in dict.fromkeys(absent))
    contract = S.EVENTS_SCHEMA if table == "events" else S.ITEMS_SCHEMA
    cols, bad = [], []
    for name in contract.names:
        if name in m.columns:
            spec = m.columns[name]
            names = (spec,) if isinstance(spec, str) else spec
            if name in JOINABLE:  # lists (a JSON export's categories) become text first
                parts = pl.DataFrame([list_text(src.get_column(c), name == S.CATEGORY).alias(f"{i}")
                                      for i, c in enumerate(names)])
                col = (parts.to_series(0) if len(names) == 1 else  # a category from several columns is a path
                       joined_text(parts.get_columns(), " > " if name == S.CATEGORY else " ")).alias(names[0])
            else:
                col = (src.get_column(spec) if isinstance(spec, str) else  # a time: [date, time of day or offset]
                       time_text([src.get_column(c) for c in spec], m.ts_unit, m.ts_format) if name == S.TS else _first(src, spec))
            # One id per exploded row: its record's plus the position, unless the elements carry their own.
            if name == S.EVENT_ID and m.explode and f"{m.explode}#" in src.columns and not str(spec).startswith(m.explode + "."):
                at = src.get_column(f"{m.explode}#")
                col = src.select(pl.when(at.is_not_null()).then(pl.concat_str([col.cast(pl.String), pl.lit(":"),
                                                                                at.cast(pl.String)]))
                                 .otherwise(col.cast(pl.String)).alias(name)).to_series()
        elif name in m.constants:
            col = pl.Series(name, [m.constants[name]] * src.height)
        elif name in raw.column_names and not m.columns:  # already canonical, no mapping given
            col = src.get_column(name)
        else:
            continue
        if name in m.values:
            col = col.cast(pl.String).replace(m.values[name])
        if name == S.CATEGORY:  # "electronics.smartphone" -> "electronics > smartphone"; a list: its deepest path
            col = one_path(col, m.category_separator, m.category_list_separator, m.category_root)
        value = typed(name, col, m.ts_unit, m.ts_format, m.decimal_separator)
        present = col.is_not_null() & (col.cast(pl.String).str.strip_chars() != "")
        bad.append((present & value.is_null()).alias(name))
        cols.append(value)
    out = pl.DataFrame(cols)
    if out.width == 0:
        raise SchemaError(f"mapping.{table}.columns: nothing mapped; canonical columns: {', '.join(contract.names)}")
    return out, pl.DataFrame(bad), src


def _reason(bad: pl.DataFrame, names: list[str]) -> pl.Series:
    """Per row, `unparseable_<column>` of the first of `names` (contract order) it could not type, or null."""
    reason = pl.repeat(None, pl.len(), dtype=pl.String)
    for name in reversed([n for n in bad.columns if n in names]):
        reason = pl.when(pl.col(name)).then(pl.lit(REASON_UNPARSEABLE.format(name))).otherwise(reason)
    return bad.select(reason.alias(S.REASON)).to_series()


def _rejected(src: pl.DataFrame, bad: pl.DataFrame, which: pl.Series | None = None) -> pl.DataFrame:
    """The rows `which` (None: any) with `reason`, `raw` (the original row as JSON) and `kept`: False for a row
    rejected for its time, True for a row imported with the values it could not type left blank."""
    reject, blank = _reason(bad, list(REJECTING)), _reason(bad, [n for n in bad.columns if n not in REJECTING])
    reasons = reject.fill_null(blank)
    which = reasons.is_not_null() if which is None else which & reasons.is_not_null()
    return pl.DataFrame({S.REASON: reasons.filter(which), KEPT: reject.filter(which).is_null(),
                         S.RAW: [json.dumps(r, default=str) for r in src.filter(which).iter_rows(named=True)]},
                        schema={S.REASON: pl.String, KEPT: pl.Boolean, S.RAW: pl.String})


def _rejects(bad: pl.DataFrame) -> pl.Series:
    flags = [pl.col(n) for n in bad.columns if n in REJECTING]
    return bad.select(pl.any_horizontal(flags) if flags else pl.repeat(False, pl.len())).to_series()


def apply(raw: pa.Table, m: TableMapping, table: str, event_ids: EventIds | None = None,
          name: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(canonical rows, rows with a value that could not be typed: `reason`, `kept`, `raw`). A
    row rejected for its time (kept False) is not in the canonical rows; a row with another value
    that could not be typed is, with that value blank (kept True). len(canonical) + rejected rows
    not kept == raw.num_rows. `event_ids`: the import's, when `raw` is one chunk of a file."""
    out, bad, src = _mapped(raw, m, table, name)
    contract = S.EVENTS_SCHEMA if table == "events" else S.ITEMS_SCHEMA
    keep = ~_rejects(bad)
    rejected = _rejected(src, bad)
    out = out.filter(keep)
    if m.negative_quantity == "return" and S.QUANTITY in out.columns:  # a till's or an ERP's returned line
        neg, kind = pl.col(S.QUANTITY) < 0, pl.col(S.EVENT_TYPE) if S.EVENT_TYPE in out.columns else pl.lit(None)
        out = out.with_columns(pl.when(neg).then(pl.lit(S.EventType.RETURN.value)).otherwise(kind).alias(S.EVENT_TYPE),
                               pl.col(S.QUANTITY).abs())
    if table == "events" and S.EVENT_ID not in out.columns:
        out = out.with_columns((event_ids or EventIds())(out))
    return out.select([c for c in contract.names if c in out.columns]), rejected


def used_columns(m: TableMapping) -> list[str]:
    return sorted({c for spec in m.columns.values() for c in ((spec,) if isinstance(spec, str) else spec)})


def item_fields(raw: pa.Table, m: TableMapping, events: TableMapping, first_row: int = 0,
                every: TableMapping | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One chunk of an events file whose rows carry item fields (see module doc) -> (per item id,
    each used shop column's latest non-blank value with the event time and file row it came
    from, plus the item's first event time; the chunk's rejected rows). `merge_item_fields`
    combines the chunks. A value that cannot be typed (a price "call us") is left blank there and
    the row reported (`kept`), so it replaces no earlier value; each column is merged on its own, so a title built from brand and
    category keeps the brand that a later row left blank."""
    if S.ITEM_ID not in m.columns:
        raise SchemaError("mapping.items.columns.item_id: required to read the items from the events file")
    out, bad, src = _mapped(raw, m, "items")
    src = src.with_columns(json_text(src.get_column(c)) for c in used_columns(m))  # lists merge as their JSON text
    item = out.get_column(S.ITEM_ID)
    has_item = item.is_not_null() & (item.str.strip_chars() != "")
    ts_spec = events.columns.get(S.TS)
    ts = (typed_ts(src.get_column(ts_spec) if isinstance(ts_spec, str) else time_text(
        [src.get_column(c) for c in ts_spec], events.ts_unit, events.ts_format), events.ts_unit, events.ts_format)
        if ts_spec else pl.Series([None] * src.height, dtype=pl.Datetime("us", "UTC")))
    used = used_columns(m)
    rows = (src.select(used).with_columns(item.alias(_KEY), ts.alias(_TS), (pl.int_range(pl.len()) + first_row).alias(_N))
            .with_columns(_blanked(bad, m))
            .filter(has_item).sort([_TS, _N], nulls_last=False)
            .with_columns(pl.when(pl.col(c).cast(pl.String).str.strip_chars() != "").then(pl.col(c)).alias(c)
                          for c in used))
    latest = []
    for c in used:
        picked = pl.col(c).is_not_null()
        latest += [pl.col(c).filter(picked).last(), pl.col(_TS).filter(picked).last().alias(f"{c}{_TS}"),
                   pl.col(_N).filter(picked).last().alias(f"{c}{_N}")]
    partial = rows.group_by(_KEY).agg(latest + [pl.col(_TS).min().alias(_FIRST)])
    absent = [c for c in used_columns(every or m) if c not in used]  # `every`: another file's item columns
    partial = partial.with_columns(pl.lit(None).alias(x) for c in absent for x in (c, f"{c}{_TS}", f"{c}{_N}"))
    return partial, _rejected(src, bad, has_item)


def _blanked(bad: pl.DataFrame, m: TableMapping) -> list[pl.Expr]:
    """The shop columns feeding a value that could not be typed, blank on those rows (so a later
    row's unreadable price does not replace an earlier row's price)."""
    out = []
    for name in (n for n in bad.columns if bad.get_column(n).any()):
        spec = m.columns.get(name)
        for c in (spec,) if isinstance(spec, str) else spec or ():
            out.append(pl.when(pl.lit(bad.get_column(name))).then(None).otherwise(pl.col(c)).alias(c))
    return out


def reduce_item_fields(partials: list[pl.DataFrame], m: TableMapping) -> pl.DataFrame:
    """Several chunks' `item_fields` as one, in the same form (an import reduces as it goes)."""
    both = pl.concat(partials, how="diagonal_relaxed")
    aggs = [pl.col(x).sort_by([f"{c}{_TS}", f"{c}{_N}"], nulls_last=False).last().alias(x)
            for c in used_columns(m) for x in (c, f"{c}{_TS}", f"{c}{_N}")]
    return both.group_by(_KEY).agg(aggs + [pl.col(_FIRST).min()])


def merge_item_fields(partials: list[pl.DataFrame], m: TableMapping) -> pl.DataFrame:
    """The catalog from `item_fields` of every chunk: each column's latest value over all of them."""
    merged = reduce_item_fields(partials, m).sort(_KEY)
    items, _, _ = _mapped(merged.select(used_columns(m)).to_arrow(), m, "items")  # every value was typed per chunk
    if S.CREATED_AT not in items.columns:  # first seen
        items = items.with_columns(merged.get_column(_FIRST).alias(S.CREATED_AT))
    return items.select([c for c in ITEM_COLUMNS if c in items.columns])


def items_from_events(raw: pa.Table, m: TableMapping, events: TableMapping) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`item_fields` and `merge_item_fields` of one table: (items, rejected rows)."""
    partial, rejected = item_fields(raw, m, events)
    return merge_item_fields([partial], m), rejected


def mapping_from_dict(data: Any, where: str) -> Mapping:
    """A mapping's YAML object -> Mapping; `events` may be a list (several event files, each with its
    own columns: views and orders), the first of which is `events` and the rest `more_events`."""
    from features.config import from_dict

    if not isinstance(data, dict):
        raise SchemaError(f"{where}: a mapping must be a YAML object with `events` and `items`")
    if isinstance(data.get("events"), list):
        if not data["events"] or "more_events" in data:
            raise SchemaError(f"{where}: events: a list needs at least one file (and no more_events key beside it)")
        data = {**data, "events": data["events"][0], "more_events": data["events"][1:]}
    return from_dict(Mapping, data, prefix="mapping")


def load_mapping(path: str) -> Mapping:
    """A mapping YAML file (local or URI) -> Mapping, with unknown keys refused by name."""
    import yaml

    fs, inner = A.resolve(path)
    with fs.open_input_stream(inner) as f:
        data = yaml.safe_load(f.read().decode()) or {}
    m = mapping_from_dict(data, path)
    if A.is_uri(path):
        return m
    # Relative table paths in a local mapping file are relative to the file's folder.
    base = os.path.dirname(os.path.abspath(path))

    def at(path: str | None) -> str | None:
        return os.path.join(base, path) if path and not A.is_uri(path) and not os.path.isabs(path) else path

    def rebase(t: TableMapping) -> TableMapping:  # (and the tables it looks up)
        return replace(t, path=at(t.path), join=tuple(replace(j, path=at(j.path)) for j in t.join))

    return Mapping(events=rebase(m.events), items=rebase(m.items), more_events=tuple(map(rebase, m.more_events)))
