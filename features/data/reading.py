"""Reading a shop's files: every file under a path or URI (CSV, TSV, Parquet, JSON lines, Excel
workbooks, RecBole atomic files; `.csv.gz`/`.jsonl.gz`/... decompressed), text read as written, in
chunks of bounded size; a CSV or TSV file without a header row is read with `column_names`.

Nested records (JSON objects, Parquet structs, as event trackers and warehouse exports write them)
are flattened to dotted column names (`properties.product_id`); `explode` names a list column
whose elements become rows of their own (an order's products), each row keeping its parent's
fields and the element's position in `<column>#`. `key_values` names a list of `{key, value}` records
(Google Analytics 4's `event_params`) that becomes one column per key, `<column>.<key>`; a value
that is itself a record of typed slots (`string_value`, `int_value`, ...) gives its one set slot.
`iter_tables` streams a file a chunk of about `chunk_rows` rows at a time (an import holds one
chunk, not the file: jobs/import_events.py); `read_table` is all chunks as one table (small files).
"""

from __future__ import annotations

import codecs
import io
import json
from collections.abc import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features import artifacts as A
from features.data.excel import SOURCE_KEY, excel_tables
from features.data.quoting import split_lines
from features.data.validate import SchemaError
from features.data.values import json_text

CHUNK_ROWS = 1_000_000
TEXT_BLOCK_BYTES = 1 << 20  # what the CSV reader parses at a time (it reads about 30 blocks ahead)
JSON_CHUNK_BYTES = 256 << 20  # JSON lines: at most about this much text a chunk, however many records
PARQUET_CHUNK_BYTES = 256 << 20  # Parquet: about this much uncompressed data a chunk (a GA4 record is kilobytes)


def format_of(path: str, fmt: str) -> str:
    """The format of one file: `fmt`, or for "auto" its name's ending (Parquet otherwise; `iter_tables`
    reads a name that says nothing, clicks.dat, by its first bytes)."""
    if fmt != "auto":
        return fmt
    name = path.lower()
    if name.endswith((".inter", ".item", ".user")):
        return "recbole"
    if name.endswith((".tsv", ".tsv.gz")):
        return "tsv"
    if name.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")):
        return "json"
    if name.endswith((".xlsx", ".xlsm", ".xlsb", ".xls", ".ods")):
        return "excel"
    return "parquet"


def check_encoding(encoding: str, where: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SchemaError(f"{where}: {encoding!r} is not a character set Python knows; e.g. utf-8, cp1252, latin-1") from None


def read_table(path: str, fmt: str = "auto", delimiter: str | None = None, encoding: str = "utf-8",
               where: str = "encoding", explode: str | None = None, key_values: str | None = None) -> pa.Table:
    """Every file under `path` (local or URI) as one table (see `iter_tables`)."""
    tables = list(iter_tables(path, fmt, delimiter, encoding, where, explode=explode, key_values=key_values))
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def iter_tables(path: str, fmt: str = "auto", delimiter: str | None = None, encoding: str = "utf-8",
                where: str = "encoding", chunk_rows: int = CHUNK_ROWS, explode: str | None = None,
                key_values: str | None = None, column_names: tuple[str, ...] | None = None,
                sheet: str | None = None) -> Iterator[pa.Table]:
    """Every file under `path` (local or URI), in tables of about `chunk_rows` rows (one file's
    rows each; an empty file gives one empty table with its columns). Text formats are read as
    strings (typing happens in the mapping, where a bad value is kept, not lost), decoded from
    `encoding`; text that is not valid in it stops the read naming the file and the setting
    (`where`) to change. Nested fields become dotted columns; `explode`, `key_values`: see the module doc
    (a chunk then holds about `chunk_rows` records, before their lists are exploded)."""
    for fs, p in A.list_files(path):
        kind = format_of(p, fmt)
        if kind == "parquet" and fmt == "auto" and not p.lower().endswith((".parquet", ".pq", ".parq")):
            with fs.open_input_stream(p, compression="detect") as f:  # a name that says nothing (clicks.dat)
                head = f.read(4096)
            kind = "parquet" if head[:4] == b"PAR1" else "json" if head.lstrip()[:1] in (b"{", b"[") else "csv"
        if column_names and kind not in ("csv", "tsv"):
            raise SchemaError(f"column_names: only CSV and TSV files are read without a header row; {p} is {kind}")
        if kind == "parquet":
            try:
                f = fs.open_input_file(p)
                pf = pq.ParquetFile(f)
            except pa.ArrowInvalid as e:
                raise SchemaError(f"{p}: not a Parquet file ({str(e)[:100]}); a file is read by its name's ending: "
                                  ".parquet .csv .tsv .txt .jsonl .ndjson .json .xlsx .xls .ods .inter/.item (and .gz "
                                  "of the text ones), any other by its first bytes; or set the mapping's format: "
                                  "parquet, csv, tsv, json, excel, recbole") from None
            with f:
                empty = True
                for batch in pf.iter_batches(batch_size=parquet_batch_rows(pf.metadata, chunk_rows)):
                    empty = False
                    yield _nested(pa.Table.from_batches([batch]), explode, key_values, p, text=False)
                if empty:
                    yield _nested(pf.schema_arrow.empty_table(), explode, key_values, p, text=False)
            continue
        if kind == "json":
            yield from _json_tables(fs, p, encoding, where, chunk_rows, explode, key_values)
            continue
        if sheet is not None and kind != "excel":
            raise SchemaError(f"sheet: {sheet!r}; only an Excel workbook has sheets, {p} is {kind}")
        if kind == "excel" and not (explode or key_values):
            yield from excel_tables(fs, p, chunk_rows, sheet)
            continue
        if explode or key_values:
            raise SchemaError(f"{'explode' if explode else 'key_values'}: {explode or key_values!r}; only JSON and "
                              f"Parquet files hold lists, {p} is {kind}")
        yield from _text_tables(fs, p, kind, delimiter, encoding, where, chunk_rows, column_names)


def parquet_batch_rows(meta: pq.FileMetaData, chunk_rows: int) -> int:
    """Records per chunk of a Parquet file: chunk_rows, fewer where its widest row group's records
    (by their uncompressed size) would make a chunk above PARQUET_CHUNK_BYTES."""
    widest = max((meta.row_group(i).total_byte_size / max(meta.row_group(i).num_rows, 1)
                  for i in range(meta.num_row_groups)), default=0.0)
    return max(1, min(chunk_rows, int(PARQUET_CHUNK_BYTES / widest) if widest > 0 else chunk_rows))


def _json_text(v: object) -> str | None:
    """A JSON value as a CSV export holds it: strings as they are, the rest as JSON writes it (123, 2.55, true)."""
    return v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def _json_rows(record: object, explode: str | None, where: str,
               key_values: str | None = None) -> list[dict[str, str | None]]:
    """One JSON record -> its flattened rows, every value text (see `_json_text`)."""
    if not isinstance(record, dict):
        raise SchemaError(f"{where}: a {type(record).__name__}, not a JSON object; each line must be one object")
    flat: dict[str, str | None] = {}
    parts: list = []

    def walk(prefix: str, v: object) -> None:
        nonlocal parts
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        elif prefix == explode and isinstance(v, list):
            parts = v
        elif prefix == key_values and isinstance(v, list):
            for pair in v:
                if isinstance(pair, dict) and pair.get("key") is not None:
                    val = next((x for k, x in pair.items() if k != "key" and x is not None), None)
                    if isinstance(val, dict):  # typed slots: the one that is set
                        val = next((x for x in val.values() if x is not None), None)
                    flat.setdefault(f"{prefix}.{pair['key']}", _json_text(val))
        else:
            flat[prefix] = _json_text(v)

    walk("", record)
    if not parts:
        return [flat | {f"{explode}#": None}] if explode else [flat]
    rows = []
    for i, part in enumerate(parts):
        row = dict(flat)
        if isinstance(part, dict):
            for k, v in _json_rows(part, None, where)[0].items():
                row[f"{explode}.{k}"] = v
        else:
            row[explode] = _json_text(part)
        rows.append(row | {f"{explode}#": str(i)})
    return rows


def _json_frame(lines: list[bytes], explode: str | None, key_values: str | None, where: str) -> pl.DataFrame:
    """JSON lines -> one flattened frame of text. Polars reads them fast; where it cannot (a field
    that is an object on one line and a number on another), each line is read on its own."""
    try:
        df = pl.read_ndjson(io.BytesIO(b"\n".join(lines)), infer_schema_length=None)
        return pl.from_arrow(_nested(df.to_arrow(), explode, key_values, where, text=True))  # type: ignore[return-value]
    except (pl.exceptions.PolarsError, pa.ArrowException):
        pass
    rows: list[dict] = []
    for n, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SchemaError(f"{where}, record {n + 1} of this chunk: not JSON ({e.msg} at character {e.pos}): "
                              f"{line[:80]!r}") from None
        rows += _json_rows(record, explode, f"{where}, record {n + 1} of this chunk", key_values)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return pl.DataFrame({c: [r.get(c) for r in rows] for c in cols}, schema={c: pl.String for c in cols})


def _json_tables(fs, p: str, encoding: str, where: str, chunk_rows: int, explode: str | None,
                 key_values: str | None) -> Iterator[pa.Table]:
    """JSON lines (one object per line; blank lines skipped), or one JSON array of objects (read
    whole), `chunk_rows` records a table."""
    utf8 = codecs.lookup(encoding).name == "utf-8"
    try:
        with fs.open_input_stream(p, compression="detect") as f:
            head, lines, rest, sent = f.read(1 << 16), [], b"", False
            if head.startswith(codecs.BOM_UTF8):
                head = head[3:]
            if head.lstrip()[:1] == b"[":  # a JSON array
                data = json.loads((head + f.read()).decode(encoding))
                lines = [json.dumps(r).encode() for r in data]
                head = b""
            block, size = head, 0
            while True:
                if block:
                    rest += block if utf8 else block.decode(encoding).encode()
                    *full, rest = rest.split(b"\n")
                    full = [x for x in full if x.strip()]
                else:
                    full = [rest] if rest.strip() else []
                    rest = b""
                lines += full
                size += sum(map(len, full))
                # A chunk is chunk_rows records, or fewer where they are large (a GA4 record is KBs).
                while len(lines) >= chunk_rows or size >= JSON_CHUNK_BYTES or (not block and (lines or not sent)):
                    n = _fitting(lines, chunk_rows)
                    take, lines = lines[:n], lines[n:]
                    size -= sum(map(len, take))
                    frame = _json_frame(take, explode, key_values, p).to_arrow()
                    yield frame.replace_schema_metadata({SOURCE_KEY: f"json\x1f,\x1f{p}"})
                    sent = True
                if not block:
                    return
                block = f.read(TEXT_BLOCK_BYTES)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        if isinstance(e, json.JSONDecodeError):
            raise SchemaError(f"{p}: a JSON array that is not valid JSON ({e.msg} at character {e.pos})") from None
        raise SchemaError(f"{p}: not valid {encoding} text ({str(e)[:120]}); set {where} to the file's character "
                          "set") from None


def _fitting(lines: list[bytes], chunk_rows: int) -> int:
    """How many of `lines` make the next chunk: chunk_rows, fewer once they hold JSON_CHUNK_BYTES."""
    total = 0
    for n, line in enumerate(lines[:chunk_rows], 1):
        total += len(line)
        if total >= JSON_CHUNK_BYTES:
            return n
    return min(chunk_rows, len(lines))


def _nested(t: pa.Table, explode: str | None, key_values: str | None, where: str, text: bool) -> pa.Table:
    """Struct columns flattened to dotted names; `key_values`' pairs as columns; `explode`'s list
    elements as rows (with their position in `<explode>#`); with `text`, every value as text (see
    `_json_text`)."""
    if not explode and not key_values and not text and not any(pa.types.is_struct(f.type) for f in t.schema):
        return t  # a flat Parquet file, as it is
    df = _unnest(pl.from_arrow(t))  # type: ignore[arg-type]
    if key_values and key_values in df.columns and df.schema[key_values] != pl.Null:
        df = _pairs_to_columns(df, key_values, where)
    elif key_values and not text and key_values not in df.columns:
        raise SchemaError(f"key_values: column {key_values!r} is not in {where}; it has: {', '.join(df.columns)}")
    elif key_values in df.columns:
        df = df.drop(key_values)
    if explode and (explode not in df.columns or df.schema[explode] == pl.Null):
        # JSON records leave out what they do not have: a chunk of views holds no order's products.
        if not text and explode not in df.columns:
            raise SchemaError(f"explode: column {explode!r} is not in {where}; it has: {', '.join(df.columns)}")
        df = df.with_columns(pl.lit(None, pl.Null).alias(explode), pl.lit(None, pl.Int64).alias(f"{explode}#"))
    elif explode:
        if not isinstance(df.schema[explode], pl.List):
            raise SchemaError(f"explode: column {explode!r} of {where} is {df.schema[explode]}, not a list")
        df = (df.with_columns(pl.int_ranges(pl.col(explode).list.len()).alias(f"{explode}#"))
              .explode([explode, f"{explode}#"], empty_as_null=True, keep_nulls=True))  # an empty order stays a row
        df = _unnest(df)
    if text:
        df = df.with_columns(
            (json_text(df.get_column(c)) if isinstance(d, (pl.List, pl.Array, pl.Struct, pl.Object))
             else pl.col(c).cast(pl.String).str.to_lowercase() if d == pl.Boolean else pl.col(c).cast(pl.String))
            for c, d in df.schema.items())
    return df.to_arrow()


def _pairs_to_columns(df: pl.DataFrame, col: str, where: str) -> pl.DataFrame:
    """A list of {key, value} records -> a column per key, `<col>.<key>`, as text (the first pair of
    a key wins); a value record of typed slots gives the slot that is set."""
    dtype = df.schema[col]
    inner = dtype.inner if isinstance(dtype, pl.List) else None
    if not isinstance(inner, pl.Struct) or "key" not in [f.name for f in inner.fields]:
        raise SchemaError(f"key_values: column {col!r} of {where} is {dtype}, not a list of {{key, value}} records")
    slots = []
    for f in inner.fields:
        if f.name != "key":
            slots += ([pl.col(f.name).struct.field(g.name).cast(pl.String) for g in f.dtype.fields]
                      if isinstance(f.dtype, pl.Struct) else [pl.col(f.name).cast(pl.String)])
    rid, val = "\x1frow", "\x1fvalue"
    df = df.with_row_index(rid)
    pairs = (df.select(rid, col).explode(col).drop_nulls(col).unnest(col)
             .select(rid, pl.col("key").cast(pl.String),
                     (pl.coalesce(slots) if slots else pl.lit(None, pl.String)).alias(val))
             .drop_nulls("key"))
    if not pairs.height:
        return df.drop(rid, col)
    wide = pairs.pivot(on="key", index=rid, values=val, aggregate_function="first")
    wide = wide.rename({k: f"{col}.{k}" for k in wide.columns if k != rid})
    return df.drop(col).join(wide, on=rid, how="left", maintain_order="left").drop(rid)


def _unnest(df: pl.DataFrame) -> pl.DataFrame:
    """Struct columns -> one column per field, `parent.field`, at every depth."""
    while any(isinstance(d, pl.Struct) for d in df.schema.values()):
        df = df.select(pl.col(c).struct.rename_fields([f"{c}.{f.name}" for f in d.fields]).struct.unnest()
                       if isinstance(d, pl.Struct) and d.fields else pl.col(c) for c, d in df.schema.items())
    return df


def _text_tables(fs, p: str, kind: str, delimiter: str | None, encoding: str, where: str,
                 chunk_rows: int, column_names: tuple[str, ...] | None = None) -> Iterator[pa.Table]:
    sep = delimiter or ("\t" if kind in ("tsv", "recbole") else ",")
    # RecBole atomic files are plain tab-separated text without quoting: a title that starts
    # with a quote ('"Gentle" shampoo') must not open a quoted field that swallows the rows after it.
    # So is a file separated by several characters (MovieLens' "::"): each line is read whole and split.
    multi, want = len(sep) > 1, column_names
    parse = (pacsv.ParseOptions(delimiter="\x1f" if multi else sep, quote_char=False) if kind == "recbole" or multi
             else pacsv.ParseOptions(delimiter=sep, newlines_in_values=True))
    column_names = ("\x1f",) if multi and column_names else column_names

    def finish(t: pa.Table) -> pa.Table:
        if kind == "recbole":  # "id:token" -> "id"
            t = t.rename_columns([n.split(":", 1)[0] for n in t.column_names])
        if multi:
            t = split_lines(t, sep, want or tuple(names[0].split(sep)), p)
        return t.replace_schema_metadata({SOURCE_KEY: f"{kind}\x1f{sep}\x1f{p}"})

    try:
        with fs.open_input_stream(p, compression="detect") as f:  # events.csv.gz and the like, decompressed
            names = pacsv.open_csv(f, parse_options=parse, read_options=pacsv.ReadOptions(
                block_size=1 << 16, encoding=encoding, column_names=list(column_names or []) or None)).schema.names
        # Every column as the text in the file: Arrow's type inference would rewrite it first
        # (SKU "00123" -> 123 -> "123", "1.50" -> "1.5", times re-formatted past a ts_format).
        with fs.open_input_stream(p, compression="detect") as f:
            reader = pacsv.open_csv(f, parse_options=parse,
                                    convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                                         strings_can_be_null=True, auto_dict_encode=False),
                                    read_options=pacsv.ReadOptions(block_size=TEXT_BLOCK_BYTES, encoding=encoding,
                                                                   column_names=list(column_names or []) or None))
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
    kind, sep, path = meta.decode().split("\x1f", 2)
    return kind, sep, path

