"""A shop's cell values -> the contract's types: times, numbers written the way shops write them, and
lists in text columns. Used by the column mapping (features/data/mapping.py).

- Times: text (ISO 8601, or `ts_format`), epoch numbers in `ts_unit` (auto: by magnitude), or
  timestamps; an offset is converted to UTC and none means UTC.
- Numbers (price, quantity): a currency sign, code or abbreviation before or after (`$12.99`,
  `£2.55`, `12.99 USD`, `EUR 12,99`, `US$ 5`, `12,50 kr`), digits grouped in thousands (`1,234.56`, `1 234,56`,
  `1'234.56`), and a price range (`$10.00 - $20.00`, the lowest: what a shop shows as "from") are
  read; a decimal comma (`12,99`) needs `decimal_separator: ","`, since `1,234` means a thousand
  and more where the point is the decimal separator. Anything else (`call us`, CSS in the field)
  stays unread (null), and the mapping says which rows (import: `blanked.parquet`). A quantity is
  a whole number of units: a fraction (goods sold by weight, `0.25` kg) is rounded half up, and a
  nonzero one is at least 1, so such a purchase is never taken for a zero quantity.
- Ids (user, item, session): text; a whole number written as a float (`10036.0`, as pandas writes an
  integer column with blanks) is the integer's text (`10036`).
- Lists in text columns (a JSON export's `"category": ["Home", "Kitchen"]`, `"description":
  ["...", "..."]`, or a Parquet list column): a category becomes the path `Home > Kitchen` (a list
  of paths: its first), other text its elements joined by a space. Text that merely starts with
  `[` and is not a JSON list of values is left as it is.
"""

from __future__ import annotations

import json

import polars as pl

from features.data import schema as S
from features.data.validate import iso_times

DECIMAL_SEPARATORS = (".", ",")
NUMERIC = {S.QUANTITY: pl.Int64, S.PRICE: pl.Float64}
TS_COLUMNS = (S.TS, S.CREATED_AT)
TEXT_COLUMNS = (S.TITLE, S.DESCRIPTION, S.CATEGORY, S.BRAND)
ID_COLUMNS = (S.USER_ID, S.ITEM_ID, S.SESSION_ID)
_TRUE = ("1", "true", "t", "yes", "y")
_FALSE = ("0", "false", "f", "no", "n")
# Currency signs (Unicode's Sc class) and the no-break and thin spaces locales group digits with.
_SIGNS = r"[\p{Sc}\u00a0\u202f\u2009]"
_CODE = r"^\p{L}{1,3}\.?\s*|\s*\p{L}{1,3}\.?$"  # USD 12.99, 12,99 EUR, R 12, kr 12,50, 12,99 zł, Rs. 500
_NOT_A_NUMBER = r"(?i)^[+-]?(?:nan|inf(?:inity)?)$"  # kept as the float cast reads them (not letters to strip)
_RANGE = r"^(.*?\d)\s*(?:-|–|—|to)\s*\D{0,4}\d"  # "10.00 - 20.00": its first number
_GROUPED = {".": r"^[+-]?\d{1,3}(?:[,' ]\d{3})+(?:\.\d*)?$", ",": r"^[+-]?\d{1,3}(?:[.' ]\d{3})+(?:,\d*)?$"}
_GROUP_MARKS = {".": r"[,' ]", ",": r"[.' ]"}


def epoch(values: pl.Expr, unit: str, sample: pl.Series) -> pl.Expr:
    if unit == "auto":  # by magnitude of the largest value: 2001-09-09 in s is 1e9, in ms 1e12, ...
        top = float(sample.abs().max() or 0)
        unit = "ns" if top > 1e17 else "us" if top > 1e14 else "ms" if top > 1e11 else "s"
    scale = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}[unit]
    return (values * scale).round(0).cast(pl.Int64).cast(pl.Datetime("us", "UTC"))


def typed_ts(col: pl.Series, ts_unit: str, ts_format: str | None) -> pl.Series:
    """A timestamp column from text, numbers or timestamps; unparseable -> null."""
    if isinstance(col.dtype, pl.Datetime) or col.dtype == pl.Date:
        out = col.cast(pl.Datetime("us"))
        return out.dt.replace_time_zone("UTC") if col.dtype == pl.Date or col.dtype.time_zone is None \
            else out.dt.convert_time_zone("UTC")
    if col.dtype.is_numeric():
        return pl.select(epoch(pl.lit(col).cast(pl.Float64), ts_unit, col.cast(pl.Float64))).to_series()
    text = col.cast(pl.String).str.strip_chars()
    numeric = text.cast(pl.Float64, strict=False)
    if ts_format:
        parsed = text.str.to_datetime(ts_format, strict=False, time_unit="us").dt.replace_time_zone("UTC")
    else:
        parsed = iso_times(text)
    if numeric.is_not_null().any():
        as_epoch = pl.select(epoch(pl.lit(numeric), ts_unit, numeric.drop_nulls())).to_series()
        parsed = as_epoch.fill_null(parsed)
    return parsed


def number_text(text: pl.Expr, decimal: str = ".") -> pl.Expr:
    """Text as a shop writes a number (see the module doc) -> text Polars casts to a float."""
    s = text.str.replace_all(_SIGNS, " ").str.strip_chars()
    s = pl.when(s.str.contains(_NOT_A_NUMBER)).then(s).otherwise(s.str.replace_all(_CODE, ""))
    s = pl.coalesce(s.str.extract(_RANGE, 1), s).str.strip_chars()
    s = pl.when(s.str.contains(_GROUPED[decimal])).then(s.str.replace_all(_GROUP_MARKS[decimal], "")).otherwise(s)
    return s.str.replace(",", ".", literal=True) if decimal == "," else s


def typed_number(col: pl.Series, dtype: pl.DataType, decimal: str = ".") -> pl.Series:
    if col.dtype != pl.String:
        return _whole(col) if dtype == pl.Int64 and col.dtype.is_float() else col.cast(dtype, strict=False)
    # Most cells are plain numbers ("12.99"; "12,99" with a decimal comma): only the others are rewritten.
    plain = (col if decimal == "." else col.str.replace(",", ".", literal=True)).cast(pl.Float64, strict=False)
    if decimal == ",":  # "1.234" is a thousand and more there, not the plain cast's 1.234
        plain = pl.select(pl.when(pl.lit(col).str.contains(".", literal=True)).then(None)
                          .otherwise(pl.lit(plain))).to_series()
    if plain.null_count() != col.null_count():
        at = (plain.is_null() & col.is_not_null()).arg_true()
        fixed = pl.select(number_text(pl.lit(col.gather(at)), decimal).cast(pl.Float64, strict=False)).to_series()
        plain = plain.scatter(at, fixed)
    return _whole(plain) if dtype == pl.Int64 else plain.cast(dtype, strict=False)


def _whole(x: pl.Series) -> pl.Series:
    """A float quantity -> whole units: half up (away from 0), and a nonzero fraction at least 1, not
    the integer cast's truncation (which made 0.5 kg a zero quantity, quarantined as non-positive)."""
    mag = (x.abs() + 0.5).floor().clip(lower_bound=1.0)
    return pl.select(pl.when(pl.lit(x) == 0).then(0.0).otherwise(pl.lit(mag) * pl.lit(x).sign())
                     .cast(pl.Int64, strict=False)).to_series().alias(x.name)


def _from_list(value: str, path: bool) -> str | None:
    try:
        v = json.loads(value)
    except ValueError:
        return value
    if not isinstance(v, list):
        return value
    if path and v and all(isinstance(x, list) for x in v):
        v = v[0]  # several category paths: the first
    flat = [y for x in v for y in (x if isinstance(x, list) else [x])]
    if any(isinstance(x, dict) for x in flat):
        return value  # records are not text
    joined = (" > " if path else " ").join(p for p in (str(x).strip() for x in flat if x is not None) if p)
    return joined or None


def json_text(col: pl.Series) -> pl.Series:
    """A Parquet list or struct column as JSON text (what a JSON export's reader gives); others as they are."""
    if not isinstance(col.dtype, (pl.List, pl.Array, pl.Struct, pl.Object)):
        return col
    return pl.Series(col.name, [None if v is None else json.dumps(v.to_list() if isinstance(v, pl.Series) else v,
                                                                   default=str, ensure_ascii=False) for v in col],
                     pl.String)


def list_text(col: pl.Series, path: bool) -> pl.Series:
    """A text column whose cells may be lists (a Parquet list, or JSON text `["a", "b"]`) -> text:
    `a > b` for a category path, `a b` otherwise. Other values are returned as they are."""
    col = json_text(col)
    if col.dtype != pl.String:
        return col
    listy = col.str.contains(r"^\s*\[")  # (one cheap pass: most text columns hold no list at all)
    if not listy.any():
        return col
    listy = listy & col.str.contains(r"\]\s*$")
    found = col.filter(listy).unique()
    table = dict(zip(found.to_list(), (_from_list(v.strip(), path) for v in found.to_list())))
    return pl.select(pl.when(listy).then(pl.lit(col).replace_strict(table, default=None, return_dtype=pl.String))
                     .otherwise(pl.lit(col)).alias(col.name)).to_series()


def typed(name: str, col: pl.Series, ts_unit: str = "auto", ts_format: str | None = None,
          decimal: str = ".") -> pl.Series:
    """One mapped column as the contract types it; a value that cannot be typed -> null."""
    if name in TS_COLUMNS:
        return typed_ts(col, ts_unit, ts_format).alias(name)
    if name in NUMERIC:
        return typed_number(col, NUMERIC[name], decimal).alias(name)
    if name == S.IN_STOCK:
        if col.dtype == pl.Boolean:
            return col.alias(name)
        low = col.cast(pl.String).str.strip_chars().str.to_lowercase()
        return pl.select(pl.when(low.is_in(_TRUE)).then(True).when(low.is_in(_FALSE)).then(False)
                         .otherwise(None).alias(name)).to_series()
    if name in ID_COLUMNS:
        return whole_ids(col).alias(name)
    return col.cast(pl.String).alias(name)


def whole_ids(col: pl.Series) -> pl.Series:
    """Ids as text, with a whole number that a spreadsheet or pandas wrote as a float (`10036.0`, a
    Parquet float column) read as the integer it is (`10036`): the other file, and the site calling
    the API, write `10036`, and every event would otherwise name no item of the catalog."""
    if col.dtype.is_float():
        whole = col.is_finite() & (col == col.round(0))
        return pl.select(pl.when(pl.lit(whole)).then(pl.lit(col).cast(pl.Int64, strict=False).cast(pl.String))
                         .otherwise(pl.lit(col).cast(pl.String))).to_series()
    return col.cast(pl.String).str.replace(r"^(-?\d+)\.0+$", "${1}")


# Words in shops' event names and the contract's type each most likely means: for the import's
# hint when event types arrive unmapped (a guess to check, never applied by itself).
EVENT_TYPE_WORDS = (("cart", "add_to_cart"), ("basket", "add_to_cart"), ("transaction", "purchase"),
                    ("purchase", "purchase"), ("order", "purchase"), ("buy", "purchase"), ("checkout", "purchase"),
                    ("refund", "return"), ("return", "return"), ("search", "search"), ("query", "search"),
                    ("click", "click"), ("view", "view"), ("detail", "view"), ("visit", "view"))


def guess_event_type(value: str) -> str | None:
    """The contract's event type a shop's event name most likely means ("addtocart" -> add_to_cart), or None."""
    v = value.lower()
    return next((canonical for word, canonical in EVENT_TYPE_WORDS if word in v), None)


def event_type_words(values: pl.Series, notes: list[str], col: str) -> dict:
    """A sampled event-type column's words -> the contract's type each most likely means (`make
    mapping`); the words with no guess are named in `notes`."""
    words = values.drop_nulls().cast(pl.String).value_counts(sort=True).head(50)
    out, unknown = {}, []
    for v, _ in words.iter_rows():
        if v in S.EVENT_TYPES:
            continue
        g = guess_event_type(v)
        if g:
            out[v] = g
        else:
            unknown.append(v)
    if unknown:
        notes.append(f"event words in {col!r} with no guess: {unknown[:10]}; map them in values.event_type "
                     f"(the types: {', '.join(S.EVENT_TYPES)}) or the feature job quarantines them")
    return out


def time_text(cols: list[pl.Series], ts_unit: str, ts_format: str | None = None) -> pl.Series:
    """A time from several columns, as text `typed_ts` reads: a date and a time of day joined by a
    space (a till's Date and Time), or, where the second column holds whole numbers, the first's
    time (ISO, epoch or `ts_format`) plus that offset in `ts_unit` (ms when auto: Diginetica's
    eventdate and timeframe, the milliseconds since the session began, which order a day's events),
    then as UTC timestamps, which `typed_ts` keeps."""
    if is_offset(cols):
        unit = {"s": "seconds", "us": "microseconds", "ns": "nanoseconds"}.get(ts_unit, "milliseconds")
        offset = cols[1].cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False)
        start = typed_ts(cols[0], "auto", ts_format)
        return pl.select(pl.lit(start) + pl.duration(**{unit: pl.lit(offset)})).to_series().alias(cols[0].name)
    return joined_text(cols, " ")


def is_offset(cols: list[pl.Series]) -> bool:
    """Two time columns of which the second holds whole numbers: a day and an offset into it."""
    if len(cols) != 2:
        return False
    offset = cols[1].cast(pl.String).str.strip_chars().drop_nulls()
    offset = offset.filter(offset != "")
    return bool(offset.len()) and bool(offset.str.contains(r"^\d+$").all())


def joined_text(cols: list[pl.Series], sep: str) -> pl.Series:
    """Per row, the non-blank values of several columns joined by `sep`; null when all are blank."""
    parts = [c.cast(pl.String).str.strip_chars() for c in cols]
    joined = pl.concat_list([pl.when(p != "").then(p) for p in parts]).list.drop_nulls().list.join(sep)
    return pl.select(pl.when(joined != "").then(joined).alias(cols[0].name)).to_series()
