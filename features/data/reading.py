"""Reading a shop's files: every file under a path or URI (CSV, TSV, Parquet, RecBole atomic files;
`.csv.gz`/`.tsv.gz` decompressed), text read as written, in chunks of bounded size.

`iter_tables` streams a file a chunk of about `chunk_rows` rows at a time, so an import of a
multi-gigabyte export holds one chunk, not the file (jobs/import_events.py); `read_table` is all
chunks as one table, for the small files (judgments, a catalog).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features import artifacts as A
from features.data.validate import SchemaError

CHUNK_ROWS = 1_000_000
SOURCE_KEY = "intently.source"  # a text table's schema metadata: "<format>:<delimiter>:<file>"
TEXT_BLOCK_BYTES = 1 << 20  # what the CSV reader parses at a time (it reads about 30 blocks ahead)


def format_of(path: str, fmt: str) -> str:
    """The format of one file: `fmt`, or for "auto" its name's ending (Parquet otherwise)."""
    if fmt != "auto":
        return fmt
    name = path.lower()
    if name.endswith((".inter", ".item", ".user")):
        return "recbole"
    if name.endswith((".tsv", ".tsv.gz")):
        return "tsv"
    if name.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    return "parquet"


def check_encoding(encoding: str, where: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SchemaError(f"{where}: {encoding!r} is not a character set Python knows; e.g. utf-8, cp1252, latin-1") from None


def read_table(path: str, fmt: str = "auto", delimiter: str | None = None, encoding: str = "utf-8",
               where: str = "encoding") -> pa.Table:
    """Every file under `path` (local or URI) as one table (see `iter_tables`)."""
    tables = list(iter_tables(path, fmt, delimiter, encoding, where))
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def iter_tables(path: str, fmt: str = "auto", delimiter: str | None = None, encoding: str = "utf-8",
                where: str = "encoding", chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
    """Every file under `path` (local or URI), in tables of about `chunk_rows` rows (one file's
    rows each; an empty file gives one empty table with its columns). Text formats are read as
    strings (typing happens in the mapping, where a bad value is kept, not lost), decoded from
    `encoding`; text that is not valid in it stops the read naming the file and the setting
    (`where`) to change."""
    for fs, p in A.list_files(path):
        kind = format_of(p, fmt)
        if kind == "parquet":
            with fs.open_input_file(p) as f:
                pf = pq.ParquetFile(f)
                empty = True
                for batch in pf.iter_batches(batch_size=chunk_rows):
                    empty = False
                    yield pa.Table.from_batches([batch])
                if empty:
                    yield pf.schema_arrow.empty_table()
            continue
        yield from _text_tables(fs, p, kind, delimiter, encoding, where, chunk_rows)


def _text_tables(fs, p: str, kind: str, delimiter: str | None, encoding: str, where: str,
                 chunk_rows: int) -> Iterator[pa.Table]:
    sep = delimiter or ("\t" if kind in ("tsv", "recbole") else ",")
    # RecBole atomic files are plain tab-separated text without quoting: a title that starts
    # with a quote ('"Gentle" shampoo') must not open a quoted field that swallows the rows after it.
    parse = (pacsv.ParseOptions(delimiter=sep, quote_char=False) if kind == "recbole" else
             pacsv.ParseOptions(delimiter=sep, newlines_in_values=True))

    def finish(t: pa.Table) -> pa.Table:
        if kind == "recbole":  # "id:token" -> "id"
            t = t.rename_columns([n.split(":", 1)[0] for n in t.column_names])
        return t.replace_schema_metadata({SOURCE_KEY: f"{kind}:{sep}:{p}"})

    try:
        with fs.open_input_stream(p, compression="detect") as f:  # events.csv.gz and the like, decompressed
            names = pacsv.open_csv(f, parse_options=parse,
                                   read_options=pacsv.ReadOptions(block_size=1 << 16, encoding=encoding)).schema.names
        # Every column as the text in the file: Arrow's type inference would rewrite it first
        # (SKU "00123" -> 123 -> "123", "1.50" -> "1.5", times re-formatted past a ts_format).
        with fs.open_input_stream(p, compression="detect") as f:
            reader = pacsv.open_csv(f, parse_options=parse,
                                    convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                                         strings_can_be_null=True, auto_dict_encode=False),
                                    read_options=pacsv.ReadOptions(block_size=TEXT_BLOCK_BYTES, encoding=encoding))
            batches: list[pa.RecordBatch] = []
            rows, sent = 0, False
            for batch in reader:
                batches.append(batch)
                rows += batch.num_rows
                while rows >= chunk_rows:  # exactly chunk_rows rows a table; the rest waits for more
                    table = pa.Table.from_batches(batches, schema=reader.schema)
                    yield finish(table.slice(0, chunk_rows))
                    rest = table.slice(chunk_rows)
                    batches, rows, sent = rest.to_batches(), rest.num_rows, True
            if rows or not sent:
                yield finish(pa.Table.from_batches(batches, schema=reader.schema))
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        if "CSV parse error" in str(e):
            raise SchemaError(f"{p}: {str(e)[:300]} (an unbalanced double quote, or a delimiter other than "
                              f"{sep!r}?)") from None
        if "UTF8" not in str(e) and "decode" not in str(e):
            raise
        raise SchemaError(f"{p}: not valid {encoding} text ({str(e)[:120]}); set {where} to the file's character "
                          "set (cp1252 or latin-1 for many spreadsheet exports)") from None


def text_source(table: pa.Table) -> tuple[str, str, str] | None:
    """(format, delimiter, file) of a table `iter_tables` read from a text file, else None."""
    meta = (table.schema.metadata or {}).get(SOURCE_KEY.encode())
    if meta is None:
        return None
    kind, rest = meta.decode().split(":", 1)
    return kind, rest[0], rest[2:]


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
