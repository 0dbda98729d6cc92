"""How a shop's file must be read, found from its first rows (`make mapping`, features/data/suggest.py):
its format when its name does not say it, a CSV's delimiter, its character set, whether its first row
is a header, how its times are written, and a decimal comma."""

from __future__ import annotations

import json

import polars as pl

from features import artifacts as A
from features.data import schema as S
from features.data.excel import sheet_names
from features.data.reading import format_of, iter_tables
from features.data.validate import SchemaError, iso_times

SAMPLE_ROWS = 20_000
DELIMITERS = (";", "\t", "|", "::")  # "::": MovieLens-1M's .dat files
FALLBACK_ENCODINGS = ("cp1252", "latin-1")  # a spreadsheet export that is not UTF-8 is most often one of these
TS_FORMATS = ("%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S", "%d.%m.%Y %H:%M",
              "%d.%m.%Y %H:%M:%S", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d-%m-%Y %H:%M", "%d-%m-%Y")
TS_UNREAD_MAX = 0.01  # share of sampled times that may fail to read and still settle the format


def sample(path: str, explode: str | None = None, key_values: str | None = None, encoding: str | None = None,
           column_names: tuple[str, ...] | None = None, sheet: str | None = None) -> tuple[pl.DataFrame, dict]:
    """The first rows of the first file under `path` (of a workbook, its `sheet`), and how the mapping
    must read it where that is not the default: `format` (csv or json for a file under a name the
    import does not know, as clicks.dat), `delimiter` (a CSV's other than the comma), `encoding`
    (`encoding`, or, where none is given and the text is not UTF-8, the first of FALLBACK_ENCODINGS
    that reads it) and `sheet`."""
    read: dict = {"sheet": sheet} if sheet else {}
    fs, first_file = next(iter(A.list_files(path)))
    kind = format_of(first_file, "auto")
    if kind == "parquet":
        with fs.open_input_stream(first_file, compression="detect") as f:
            head = f.read(4096)
        if head[:4] != b"PAR1":  # not Parquet, whatever its name: read it as the import will
            kind = read["format"] = "json" if head.lstrip()[:1] in (b"{", b"[") else "csv"
    if kind == "csv":  # the header line's most frequent separator
        with fs.open_input_stream(first_file, compression="detect") as f:
            header = (f.read(1 << 16).decode("utf-8", "replace").splitlines() or [""])[0]
        counts = {d: header.count(d) for d in (",", *DELIMITERS)}
        best = max(counts, key=lambda d: counts[d])
        if best != "," and counts[best] > counts[","]:
            read["delimiter"] = best
    for enc in [encoding] if encoding else ["utf-8", *FALLBACK_ENCODINGS]:
        try:
            t = next(iter_tables(path, read.get("format", "auto"), read.get("delimiter"), enc, chunk_rows=SAMPLE_ROWS,
                                 explode=explode, key_values=key_values, column_names=column_names, sheet=sheet))
        except SchemaError as e:
            if encoding or f"not valid {enc} text" not in str(e) or enc == FALLBACK_ENCODINGS[-1]:
                raise
            continue
        if enc != "utf-8":
            read["encoding"] = enc
        return pl.from_arrow(t.slice(0, SAMPLE_ROWS)), read  # type: ignore[return-value]
    raise AssertionError("unreachable")


def decimal_comma(values: pl.Series) -> bool:
    """Whether numbers such as prices are mostly written with a decimal comma (12,99 EUR)."""
    text = values.drop_nulls().cast(pl.String).str.strip_chars()
    comma = text.str.contains(r"^\D{0,4}\d+,\d{1,2}\D{0,4}$").sum()
    point = text.str.contains(r"^\D{0,4}\d+\.\d{1,2}\D{0,4}$").sum()
    return comma > point


def without_header(df: pl.DataFrame, path: str, read: dict, events: bool) -> pl.DataFrame | None:
    """A CSV without a header row (YooChoose's clicks.dat, MovieLens-1M's .dat files) reads its first row
    as the column names: when one is a number over a column of numbers, or a time over times (no header
    names a column so), or most are numbers or times, the file sampled again with its columns named
    column_1, column_2, ... (of events, the one column of times named ts); None for a file with a header.
    `read`: how `sample` read it."""
    names = pl.Series(df.columns)
    num, iso = names.cast(pl.Float64, strict=False).is_not_null(), iso_times(names).is_not_null()

    def like(i: int) -> bool:
        v = df.get_column(names[i]).drop_nulls()
        return bool(v.len()) and bool(num[i] and v.cast(pl.Float64, strict=False).is_not_null().all()
                                      or iso[i] and iso_times(v).is_not_null().all())

    kind = read.get("format") or format_of(next(iter(A.list_files(path)))[1], "auto")
    if kind not in ("csv", "tsv") or not ((num | iso).sum() * 2 >= len(names) or any(map(like, range(len(names))))):
        return None
    cols = tuple(f"column_{i + 1}" for i in range(len(names)))
    df = sample(path, encoding=read.get("encoding"), column_names=cols)[0]

    def times(c: str) -> bool:  # ISO text, or whole numbers that are epoch seconds or ms of 2000-2100
        v = df.get_column(c).drop_nulls()
        n = v.cast(pl.Float64, strict=False)
        return bool(iso_times(v).is_not_null().all() or n.is_not_null().all() and (
            n.is_between(946_684_800, 4_102_444_800).all() or n.is_between(946_684_800e3, 4_102_444_800e3).all()))

    named = tuple(S.TS if events and times(c) else c for c in cols)
    return df.rename(dict(zip(cols, named if named.count(S.TS) == 1 else cols)))


def time_settings(values: pl.Series, notes: list[str], col: str, unsure: list[str]) -> dict:
    """The mapping's time settings (ts_unit, ts_format) for a sampled time column. A few unreadable times (a tracker's
    stray row) do not decide it: the reading that takes all but TS_UNREAD_MAX of them wins, and the
    note says those rows will be quarantined."""
    text = values.drop_nulls().cast(pl.String).str.strip_chars()
    text = text.filter(text != "")
    if text.is_empty():
        return {}
    allowed = int(text.len() * TS_UNREAD_MAX)

    def reads(parsed: pl.Series) -> bool:
        bad = text.filter(parsed.is_null())
        if bad.len() > allowed:
            return False
        if bad.len():
            notes.append(f"{bad.len()} of {text.len()} sampled times in {col!r} do not read (e.g. {bad[0]!r}); "
                         "the import quarantines such rows (unparseable_ts)")
        return True

    if reads(text.cast(pl.Float64, strict=False)):
        return {"ts_unit": "auto"}  # epoch numbers: the unit is read from their size
    if reads(iso_times(text)):
        return {}
    fits = [f for f in TS_FORMATS if text.str.to_datetime(f, strict=False).null_count() <= allowed]
    if not fits:
        notes.append(f"the times in {col!r} (e.g. {text[0]!r}) are neither ISO 8601 nor a common pattern: set "
                     "ts_format (a strftime pattern)")
        return {"ts_format": "<strftime pattern, e.g. %d/%m/%Y %H:%M>"}
    best = min(fits, key=lambda f: text.str.to_datetime(f, strict=False).null_count())
    reads(text.str.to_datetime(best, strict=False))
    twin = best.replace("%d", "%D").replace("%m", "%d").replace("%D", "%m")
    if twin in fits:  # both day-first and month-first read the sampled times
        notes.append(f"the times in {col!r} (e.g. {text[0]!r}) read both day-first and month-first in this "
                     f"sample: ts_format {best!r} is a guess; check it against a date you know")
        unsure.append(notes[-1])
    return {"ts_format": best}


def workbook_sheets(path: str) -> list[str]:
    """The sheets of the first file under `path` when it is a workbook, else []."""
    fs, first_file = next(iter(A.list_files(path)))
    return sheet_names(fs, first_file) if format_of(first_file, "auto") == "excel" else []


def column_hint(table: str, names: list[str]) -> str:
    """Why a mapped column may be missing from a text file with these column names ("" if no idea)."""
    seps = [d for d in (";", "\t", "|") if len(names) == 1 and d in names[0]]
    if seps:
        return f" (one column: is the file separated by {seps[0]!r}? set mapping.{table}.delimiter)"
    data = pl.Series(names, dtype=pl.String).str.strip_chars().str.contains(r"^[+-]?\d[\d.,:/ T-]*(Z|[+-]\d\d:?\d\d)?$")
    return (f" (that first row looks like data: a file without a header row needs its columns named, "
            f"mapping.{table}.column_names: [...])" if data.any() else "")


def element_fields(col: pl.Series) -> list[str]:
    """The fields of a list-of-records column (a Parquet list of structs, or JSON text of lists of objects); else []."""
    dtype = col.dtype
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        return [f.name for f in dtype.inner.fields]
    if dtype != pl.String:
        return []
    fields: dict[str, None] = {}
    for v in col.drop_nulls().head(200):
        v = v.strip()
        if not v.startswith("["):
            continue
        try:
            parsed = json.loads(v)
        except ValueError:
            return []
        if not isinstance(parsed, list) or not all(isinstance(e, dict) for e in parsed):
            return []
        fields.update(dict.fromkeys(k for e in parsed for k in e))
    return list(fields)
