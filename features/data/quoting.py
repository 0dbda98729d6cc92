"""Delimited text beyond what Arrow's CSV reader does: the mark of an unbalanced double quote in a
CSV file that was read anyway (jobs/import_events.py warns with it: whole rows of the file inside
one value), and lines split on a separator of several characters (MovieLens' `::`)."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from features.data.validate import SchemaError


def split_lines(lines: pa.Table, sep: str, names: tuple[str, ...], path: str) -> pa.Table:
    """A one-column table of whole lines -> one text column per name, split on `sep`; a line with
    another number of fields stops the read, naming it (none is cut or padded)."""
    parts = pl.from_arrow(lines.column(0)).cast(pl.String).str.split(sep)  # type: ignore[union-attr]
    odd = parts.list.len() != len(names)
    if odd.any():
        line = lines.column(0)[int(odd.arg_max() or 0)].as_py()
        raise SchemaError(f"{path}: a line with {len(line.split(sep))} fields separated by {sep!r} where the "
                          f"columns are {len(names)} ({', '.join(names)}): {line[:120]!r}")
    return pl.DataFrame({n: parts.list.get(i) for i, n in enumerate(names)}).to_arrow()


def swallowed_rows(raw: pa.Table, delimiter: str) -> tuple[int, str | None]:
    """Lines inside values that look like whole rows of this file (at least as many delimiters as it
    has columns, less one): the mark of an unbalanced double quote, after which CSV quoting reads the
    following rows into one value and they are never imported. (such lines, the first such value's
    start); (0, None) for a clean file. A multi-line description rarely holds that many delimiters."""
    need = raw.num_columns - 1
    if need < 1:
        return 0, None
    df = pl.from_arrow(raw)
    assert isinstance(df, pl.DataFrame)
    n, first = 0, None
    for name, dtype in df.schema.items():
        if dtype != pl.String:
            continue
        col = df.get_column(name)
        for v in col.filter(col.str.contains("\n", literal=True)).to_list():
            k = sum(line.count(delimiter) >= need for line in v.split("\n")[1:])
            if k:
                n, first = n + k, first or v[:60]
    return n, first
