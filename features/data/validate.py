"""Input validation: schema checks that fail loudly, and row checks that quarantine.

Two levels, by design:
- A *file* whose columns are missing or of a type that cannot be converted losslessly raises
  `SchemaError` naming the file, the column, the type found and the types allowed. Nothing is
  read past such a file.
- A *row* that breaks the contract (null required field, unknown event type, unparseable or
  future timestamp, ...) is kept, with a `reason` and the original row as JSON in `raw`, in the
  quarantine table. Every input row ends up in exactly one of (valid, quarantined).

Timestamps: timestamp columns of any unit are converted to microseconds in UTC; tz-naive values
are taken to be UTC. String timestamps are parsed as ISO 8601 (`2011-12-09T12:50:00Z`,
`2011-12-09 12:50:00`, `2011-12-09T12:50:00+01:00`, `2011-12-09`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

import polars as pl
import pyarrow as pa

from features.data import schema as S
from features.data.text import MARKUP_FIELDS, strip_markup_expr

_STRING_LIKE = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
_BAD_TS = "__ts_unparseable"  # internal column: input ts present but not a timestamp
_ORDER = "__order"


class SchemaError(ValueError):
    """The input violates the schema at the file/column level; the job must stop."""


@dataclass(frozen=True)
class ValidationConfig:
    """Row-level limits. `now` (ISO 8601) pins the clock for the future-timestamp check."""

    max_future_s: float = S.MAX_FUTURE_S
    max_price: float = S.MAX_PRICE
    max_quantity: int = S.MAX_QUANTITY
    now: str | None = None

    def now_utc(self) -> dt.datetime:
        if self.now is None:
            return dt.datetime.now(dt.timezone.utc)
        parsed = dt.datetime.fromisoformat(self.now.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _is_stringish(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_stringish(t.value_type)
    return any(f(t) for f in _STRING_LIKE)


def _allowed(target: pa.DataType) -> str:
    if target == pa.string():
        return "string (or an integer type, converted to string)"
    if pa.types.is_timestamp(target):
        return "timestamp (any unit; naive means UTC), date, or ISO-8601 string"
    if pa.types.is_integer(target):
        return "an integer type"
    if pa.types.is_floating(target):
        return "a numeric type (integer, float or decimal)"
    if pa.types.is_boolean(target):
        return "bool"
    return str(target)


def _compatible(found: pa.DataType, target: pa.DataType) -> bool:
    if pa.types.is_null(found):
        return True
    if target == pa.string():
        return _is_stringish(found) or pa.types.is_integer(found)
    if pa.types.is_timestamp(target):
        return pa.types.is_timestamp(found) or pa.types.is_date(found) or _is_stringish(found)
    if pa.types.is_integer(target):
        return pa.types.is_integer(found)
    if pa.types.is_floating(target):
        return pa.types.is_integer(found) or pa.types.is_floating(found) or pa.types.is_decimal(found)
    if pa.types.is_boolean(target):
        return pa.types.is_boolean(found)
    return found == target


def check_schema(found: pa.Schema, contract: pa.Schema, required: Iterable[str], source: str) -> list[str]:
    """Raise SchemaError if `found` cannot be conformed to `contract`.

    Returns the names of extra columns that will be ignored (for a warning).
    """
    names = set(found.names)
    missing = [c for c in required if c not in names]
    if missing:
        raise SchemaError(
            f"{source}: required column(s) {', '.join(repr(m) for m in missing)} missing; "
            f"found columns: {', '.join(found.names) or '(none)'}; "
            f"required: {', '.join(required)}"
        )
    for field in contract:
        if field.name not in names:
            continue
        t = found.field(field.name).type
        if not _compatible(t, field.type):
            raise SchemaError(
                f"{source}: column '{field.name}' has type {t}; allowed: {_allowed(field.type)}"
            )
    return [n for n in found.names if n not in contract.names]


def _conform_column(col: pa.ChunkedArray | pa.Array, target: pa.DataType) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), target)
    if target == pa.string():
        return col.cast(pa.string())
    if pa.types.is_floating(target):
        return col.cast(target)
    if pa.types.is_integer(target):
        # Out-of-range values are flagged by the row checks; saturate instead of erroring here.
        wide = col.cast(pa.int64())
        lo, hi = -(2**31), 2**31 - 1
        s = pl.from_arrow(wide)
        return s.clip(lo, hi).cast(pl.Int32).to_arrow()
    if pa.types.is_boolean(target):
        return col
    raise AssertionError(f"unhandled target type {target}")


def iso_times(text: pl.Series) -> pl.Series:
    """ISO 8601 text -> UTC timestamps: a date, or a date and time ('T' or a space between; seconds
    and fractions optional) with an optional offset (Z, UTC, GMT, +02, +0200, +02:00; none means
    UTC); a year-first date may use slashes or points (2024/01/05, 2024.01.05). Anything else is null, never a guess: '12/1/2010' is 1 December in one shop and 12 January
    in the next, so such times need the mapping's ts_format."""
    t = text.str.strip_chars().str.replace(r"^(\d{4})[/.](\d{2})[/.](\d{2})(\D|$)", "${1}-${2}-${3}${4}")  # 2024/01/05
    t = (t.str.replace(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2})(?::(\d{2}))?", "${1}T${2}:${3}")
          .str.replace(r"T(\d{2}:\d{2}):(\D|$)", "T${1}:00${2}")  # no seconds: :00
          .str.replace(r"(T[\d:.]+)\s*(?:Z|UTC|GMT)$", "${1}+00:00")
          .str.replace(r"(T[\d:.]+)\s*([+-]\d{2})$", "${1}${2}:00")
          .str.replace(r"(T[\d:.]+)\s*([+-]\d{2}):?(\d{2})$", "${1}${2}:${3}"))
    iso = t.str.contains(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2})?)?$")
    aware = t.str.strptime(pl.Datetime("us", "UTC"), "%Y-%m-%dT%H:%M:%S%.f%:z", strict=False)
    naive = t.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S%.f", strict=False).dt.replace_time_zone("UTC")
    day = t.str.strptime(pl.Datetime("us"), "%Y-%m-%d", strict=False).dt.replace_time_zone("UTC")
    return pl.select(pl.when(pl.lit(iso)).then(pl.coalesce(pl.lit(aware), pl.lit(naive), pl.lit(day)))
                     .alias(text.name)).to_series()


def _conform_ts(col: pa.ChunkedArray | pa.Array) -> tuple[pl.Series, pl.Series]:
    """Return (ts as Datetime[us, UTC], flag: value present but not parseable)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_null(col.type):
        s = pl.Series(S.TS, [None] * len(col), dtype=pl.Datetime("us", "UTC"))
        return s, pl.Series(_BAD_TS, [False] * len(col))
    s = pl.from_arrow(col)
    if isinstance(s, pl.DataFrame):  # pragma: no cover - from_arrow of an Array is a Series
        s = s.to_series()
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("us"))
    if isinstance(s.dtype, pl.Datetime):
        if s.dtype.time_zone is None:
            s = s.dt.replace_time_zone("UTC")
        s = s.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        return s.alias(S.TS), pl.Series(_BAD_TS, [False] * len(s))
    text = s.cast(pl.String).str.strip_chars()
    parsed = iso_times(text)
    bad = text.is_not_null() & (text != "") & parsed.is_null()
    return parsed.alias(S.TS), bad.alias(_BAD_TS)


def conform(raw: pa.Table, contract: pa.Schema, required: Iterable[str], source: str) -> pl.DataFrame:
    """Cast `raw` column by column to `contract`; missing optional columns become nulls.

    The result has the contract's columns plus two internal ones: `__order` (row position, to
    keep the input order) and, for tables with a `ts`-like timestamp, a flag for values that
    were present but unparseable. Raises SchemaError on incompatible columns.
    """
    check_schema(raw.schema, contract, required, source)
    cols: dict[str, pl.Series] = {}
    bad_ts = pl.Series(_BAD_TS, [False] * raw.num_rows)
    for field in contract:
        if field.name not in raw.column_names:
            cols[field.name] = pl.Series(field.name, [None] * raw.num_rows).cast(
                pl.from_arrow(pa.array([], field.type)).dtype
            )
            continue
        col = raw.column(field.name)
        if pa.types.is_timestamp(field.type):
            s, flag = _conform_ts(col)
            if field.name == S.TS:
                bad_ts = flag
            else:  # optional timestamps (items.created_at): unparseable -> null, not a row error
                pass
            cols[field.name] = s.alias(field.name)
        else:
            cols[field.name] = pl.from_arrow(_conform_column(col, field.type)).alias(field.name)
    df = pl.DataFrame(list(cols.values()))
    return df.with_columns(bad_ts, pl.int_range(pl.len(), dtype=pl.UInt32).alias(_ORDER))


def _raw_json(raw: pa.Table) -> pl.Series:
    """Each original row as a JSON object string (values that failed typing survive here)."""
    df = pl.from_arrow(raw)
    assert isinstance(df, pl.DataFrame)
    if df.width == 0:
        return pl.Series(S.RAW, ["{}"] * raw.num_rows)
    return df.select(pl.struct(pl.all()).struct.json_encode().alias(S.RAW)).to_series()


def _blank(col: str) -> pl.Expr:
    return pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")


def _first_reason(checks: list[tuple[pl.Expr, S.Reason]]) -> pl.Expr:
    expr = pl.lit(None, dtype=pl.String)
    for cond, reason in reversed(checks):
        expr = pl.when(cond).then(pl.lit(reason.value)).otherwise(expr)
    return expr.alias(S.REASON)


def _split(df: pl.DataFrame, raw: pa.Table, reason: pl.Expr, contract: pa.Schema) -> tuple[pl.DataFrame, pl.DataFrame]:
    df = df.with_columns(reason)
    is_bad = df.get_column(S.REASON).is_not_null()
    ok = df.filter(~is_bad).select(contract.names)
    bad_idx = df.filter(is_bad).get_column(_ORDER)
    raw_bad = _raw_json(raw.take(pa.array(bad_idx.to_numpy()))) if len(bad_idx) else pl.Series(S.RAW, [], pl.String)
    bad = df.filter(is_bad).select([*contract.names, S.REASON]).with_columns(raw_bad.alias(S.RAW))
    return ok, bad


def validate_events(
    raw: pa.Table,
    item_ids: pl.Series | None,
    cfg: ValidationConfig,
    source: str = "events",
    now: dt.datetime | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split raw events into (valid rows in EVENTS_SCHEMA, quarantined rows with reason, raw).

    Row checks only; duplicate event ids are global and handled by `split_duplicates`.
    `item_ids` is the catalog's id set (None skips the unknown-item check).
    """
    df = conform(raw, S.EVENTS_SCHEMA, S.EVENTS_REQUIRED, source)
    now = now or cfg.now_utc()
    limit = now + dt.timedelta(seconds=cfg.max_future_s)
    etype = pl.col(S.EVENT_TYPE)
    is_search = etype == S.EventType.SEARCH.value
    checks: list[tuple[pl.Expr, S.Reason]] = [
        (_blank(S.EVENT_ID), S.Reason.NULL_EVENT_ID),
        (pl.col(_BAD_TS), S.Reason.UNPARSEABLE_TS),
        (pl.col(S.TS).is_null(), S.Reason.NULL_TS),
        (_blank(S.USER_ID), S.Reason.NULL_USER_ID),
        (_blank(S.EVENT_TYPE), S.Reason.NULL_EVENT_TYPE),
        (~etype.is_in(list(S.EVENT_TYPES)), S.Reason.UNKNOWN_EVENT_TYPE),
        (pl.col(S.TS) > pl.lit(limit).dt.cast_time_unit("us"), S.Reason.FUTURE_TS),
        (is_search & _blank(S.QUERY), S.Reason.SEARCH_WITHOUT_QUERY),
        (~is_search & _blank(S.ITEM_ID), S.Reason.MISSING_ITEM_ID),
    ]
    if item_ids is not None:
        checks.append(
            (~_blank(S.ITEM_ID) & ~pl.col(S.ITEM_ID).is_in(item_ids.implode()), S.Reason.UNKNOWN_ITEM)
        )
    checks += [
        (pl.col(S.PRICE) < 0, S.Reason.NEGATIVE_PRICE),
        (pl.col(S.PRICE).is_nan() | (pl.col(S.PRICE) > cfg.max_price), S.Reason.ABSURD_PRICE),
        (pl.col(S.QUANTITY) <= 0, S.Reason.NON_POSITIVE_QUANTITY),
        (pl.col(S.QUANTITY) > cfg.max_quantity, S.Reason.ABSURD_QUANTITY),
    ]
    return _split(df, raw, _first_reason(checks), S.EVENTS_SCHEMA)


def split_duplicates(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep one row per event_id: the earliest ts, ties broken by content (deterministic).

    Returns (kept, duplicates with reason=duplicate_event_id and the row as JSON in raw).
    """
    contested = df.get_column(S.EVENT_ID).is_duplicated()
    if df.is_empty() or not contested.any():
        return df, _empty_quarantine(S.EVENTS_SCHEMA)
    clean = df.filter(~contested)
    keyed = df.filter(contested).with_columns(
        pl.struct(pl.all()).struct.json_encode().alias(S.RAW),
    ).sort([S.EVENT_ID, S.TS, S.RAW])
    first = keyed.get_column(S.EVENT_ID).is_first_distinct()
    kept = pl.concat([clean, keyed.filter(first).drop(S.RAW)])
    dups = keyed.filter(~first).with_columns(pl.lit(S.Reason.DUPLICATE_EVENT_ID.value).alias(S.REASON))
    return kept, dups.select([*S.EVENTS_SCHEMA.names, S.REASON, S.RAW])


def validate_items(raw: pa.Table, cfg: ValidationConfig, source: str = "items") -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a raw catalog into (valid items in ITEMS_SCHEMA, quarantined rows).

    in_stock defaults to true when null; HTML markup in the text fields is stripped. Of duplicate
    item ids the first row in input order is kept and the rest are quarantined.
    """
    df = conform(raw, S.ITEMS_SCHEMA, S.ITEMS_REQUIRED, source)
    # Text without HTML markup, before a title is judged blank (serving's PUT cleans the same way).
    df = df.with_columns([pl.col(S.IN_STOCK).fill_null(True)]
                         + [strip_markup_expr(pl.col(c)).alias(c) for c in MARKUP_FIELDS if c in df.columns])
    checks = [
        (_blank(S.ITEM_ID), S.Reason.NULL_ITEM_ID),
        (_blank(S.TITLE), S.Reason.MISSING_TITLE),
        (pl.col(S.PRICE) < 0, S.Reason.NEGATIVE_PRICE),
        (pl.col(S.PRICE).is_nan() | (pl.col(S.PRICE) > cfg.max_price), S.Reason.ABSURD_PRICE),
    ]
    reason = _first_reason(checks)
    # A duplicate is judged among otherwise valid rows, so a bad first row cannot shadow a good one.
    df = df.with_columns(reason.alias("__r"))
    ok_first = (
        df.filter(pl.col("__r").is_null())
        .filter(pl.col(S.ITEM_ID).is_first_distinct())
        .get_column(_ORDER)
    )
    final = (
        pl.when(pl.col("__r").is_not_null())
        .then(pl.col("__r"))
        .when(~pl.col(_ORDER).is_in(ok_first.implode()))
        .then(pl.lit(S.Reason.DUPLICATE_ITEM_ID.value))
        .otherwise(pl.lit(None, pl.String))
        .alias(S.REASON)
    )
    df = df.with_columns(final).drop("__r")
    return _split(df.drop(S.REASON), raw, df.get_column(S.REASON).alias(S.REASON), S.ITEMS_SCHEMA)


def _empty_quarantine(contract: pa.Schema) -> pl.DataFrame:
    empty = pl.from_arrow(contract.empty_table())
    assert isinstance(empty, pl.DataFrame)
    return empty.with_columns(pl.lit(None, pl.String).alias(S.REASON), pl.lit(None, pl.String).alias(S.RAW))


def reason_counts(quarantine: pl.DataFrame) -> dict[str, int]:
    """{reason: rows}, largest first."""
    if quarantine.is_empty():
        return {}
    counts = quarantine.group_by(S.REASON).len().sort(["len", S.REASON], descending=[True, False])
    return {r: int(n) for r, n in counts.iter_rows()}
