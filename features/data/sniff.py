"""How a shop's file must be read, found from its first rows (`make mapping`, features/data/suggest.py):
its format when its name does not say it, a CSV's delimiter, its character set, and a decimal comma."""

from __future__ import annotations

import polars as pl

from features import artifacts as A
from features.data.reading import format_of, iter_tables
from features.data.validate import SchemaError

SAMPLE_ROWS = 20_000
DELIMITERS = (";", "\t", "|", "::")  # "::": MovieLens-1M's .dat files
FALLBACK_ENCODINGS = ("cp1252", "latin-1")  # a spreadsheet export that is not UTF-8 is most often one of these


def sample(path: str, explode: str | None = None, key_values: str | None = None, encoding: str | None = None,
            column_names: tuple[str, ...] | None = None) -> tuple[pl.DataFrame, dict]:
    """The first rows of the first file under `path`, and how the mapping must read it where that is
    not the default: `format` (csv for a text file under a name the import does not know, as
    clicks.dat), `delimiter` (a CSV's other than the comma) and `encoding` (`encoding`, or, where
    none is given and the text is not UTF-8, the first of FALLBACK_ENCODINGS that reads it)."""
    read: dict = {}
    fs, first_file = next(iter(A.list_files(path)))
    kind = format_of(first_file, "auto")
    if kind == "parquet":
        with fs.open_input_stream(first_file, compression="detect") as f:
            if f.read(4) != b"PAR1":  # not Parquet, whatever its name: read it as text
                kind = read["format"] = "csv"
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
                                 explode=explode, key_values=key_values, column_names=column_names))
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
