"""Import a shop's export (CSV, TSV, Parquet, JSON lines, Excel or RecBole atomic files) into the canonical tables.

    python -m jobs.import_events --set mapping=shop_mapping.yaml --set output=data/canonical/shop
    python -m jobs.import_events --set mapping=recbole --set events=ml.inter --set items=ml.item
    python -m jobs.import_events --set mapping=uci-online-retail --set events=online_retail_II.csv
    python -m jobs.import_events --set mapping=auto --set events=export/events.csv [--set items=...]

`mapping` is a YAML file (features/data/mapping.py, docs/data.md) or a preset: `recbole` (RecBole's
usual field names), `uci-online-retail` (either UCI Online Retail layout; items come from the log
itself) or `auto`: the mapping `make mapping` would write (features/data/suggest.py), saved as
<output>/mapping.yaml and used as it is unless something in it needs a person (a column or time
format it found nothing for, dates that read day-first and month-first, no header row), which
stops the import naming each and the file to edit. `events` / `items` override the paths in the
mapping; a mapping whose items have no path of their own reads them from the events file (one item
per id, its latest fields). Writes
<output>/events.parquet, items.parquet, rejected.parquet (rows not imported: an event whose time
could not be read, with a reason and the original row) and blanked.parquet (rows imported with a
value that could not be typed left blank, a price "call us" say: reason and original row), and
prints counts; every input row is in exactly one of events/items and rejected (an events file's
item fields: merged per item; a long catalog's rows, `properties`: one item per id).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features import artifacts as A
from features.config import ConfigError
from features.data import schema as S
from features.data.event_ids import EventIds
from features.data.fill import FillDown, inherit
from features.data.joins import Joiner
from features.data.mapping import (
    JOINABLE,
    KEPT,
    Mapping,
    TableMapping,
    apply,
    check_mapping,
    item_fields,
    load_mapping,
    mapping_from_dict,
    merge_item_fields,
    recbole_defaults,
    reduce_item_fields,
    used_columns,
)
from features.data.online_retail import import_online_retail
from features.data.pivot import pivot_properties, property_names
from features.data.quoting import swallowed_rows
from features.data.reading import CHUNK_ROWS, check_encoding, iter_tables, read_table, text_source
from features.data.sniff import column_hint
from features.data.validate import SchemaError
from features.data.values import guess_event_type
from jobs.common import load_job_config, parse_args, run_job, write_table

PRESETS = ("recbole", "uci-online-retail", "auto")


@dataclass(frozen=True)
class ImportEventsConfig:
    mapping: str | None = None   # a mapping YAML (local or URI) or a preset: recbole | uci-online-retail | auto
    events: str | None = None    # the shop's events file/folder/URI; overrides mapping.events.path
    items: str | None = None     # the shop's items file/folder/URI; overrides mapping.items.path (none:
    #                              the mapping's, or the events file when the mapping gives no items path)
    output: str = "data/canonical/shop"
    # The text files' character set (utf-8 when null; cp1252 or latin-1 for many spreadsheet
    # exports): for a preset, or over both tables of a mapping file (which can also set its own).
    encoding: str | None = None
    chunk_rows: int = CHUNK_ROWS  # the events file is read, mapped and written this many rows at a time


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


def _guessed_mapping(cfg: ImportEventsConfig) -> Mapping:
    """`mapping: auto`: the suggested mapping of the events (and items) files, written next to the
    import's output; a guess with blockers stops here, naming them and that file."""
    import yaml

    from features.data.suggest import suggest, to_yaml

    if not cfg.events:
        raise ConfigError("events: mapping=auto guesses the mapping from the events file; pass events (make run EVENTS=...)")
    s = suggest(_paths(cfg.events), cfg.items, cfg.encoding)
    text, path = to_yaml(s), A.join(cfg.output, "mapping.yaml")
    fs, inner = A.resolve(cfg.output)
    fs.create_dir(inner, recursive=True)
    with fs.open_output_stream(A.join(inner, "mapping.yaml")) as f:
        f.write(text.encode())
    print(f"mapping=auto: the guessed mapping is {path}" + (", with these notes:" if s.notes else ""), flush=True)
    for note in s.notes:
        print(f"  CHECK: {note}", flush=True)
    if s.blockers():
        raise ConfigError(f"mapping=auto: the guess needs a person before an import: {'; '.join(s.blockers())}. Edit "
                          f"{path} (a copy outside the output), then make run MAPPING=<that file>")
    return mapping_from_dict(yaml.safe_load(text), path)


def _resolve_mapping(cfg: ImportEventsConfig) -> tuple[Mapping | None, bool]:
    """(the mapping with this run's paths, whether the items come from the events file)."""
    if cfg.mapping is None:
        raise ConfigError(f"mapping: required; a mapping YAML file or a preset ({', '.join(PRESETS)})")
    if cfg.mapping == "uci-online-retail":
        return None, False
    m = (recbole_defaults(None, None) if cfg.mapping == "recbole" else _guessed_mapping(cfg) if cfg.mapping == "auto"
         else load_mapping(cfg.mapping))
    enc = {"encoding": cfg.encoding} if cfg.encoding else {}
    from_log = (cfg.mapping != "recbole" and not cfg.items and bool(m.items.columns)
                and (not m.items.path or (m.items.path, m.items.sheet) == (m.events.path, m.events.sheet)))
    given = [] if cfg.mapping == "auto" else _paths(cfg.events)  # (a guess names its files, look-ups included)
    sources = [m.events, *m.more_events]
    if len(given) > len(sources):
        raise ConfigError(f"events: {len(given)} files ({cfg.events}) for a mapping with {len(sources)} events "
                          "file(s); list them under the mapping's events (docs/data.md)")
    sources = [replace(e, path=p, **enc) for e, p in zip(sources, given + [e.path for e in sources[len(given):]])]
    events = sources[0]
    if not events.path:
        raise ConfigError("events: no events file; set mapping.events.path or pass events (make run EVENTS=...)")
    if not (cfg.items or m.items.path or from_log):
        raise ConfigError("items: no items file; pass items (make run ITEMS=...), set mapping.items.path, or map the "
                          "item columns of the events file (mapping.items.columns without a path; docs/data.md)")
    # Items from the events file: its file settings, and its way of writing numbers and times unless set apart.
    items = replace(m.items, path=events.path, format=events.format, delimiter=events.delimiter,
                    encoding=events.encoding, column_names=events.column_names, sheet=events.sheet,
                    decimal_separator=(m.items.decimal_separator if m.items.decimal_separator != "." else
                                       events.decimal_separator),
                    ts_unit=m.items.ts_unit if m.items.ts_unit != "auto" else events.ts_unit,
                    ts_format=m.items.ts_format or events.ts_format) if from_log else \
        replace(m.items, path=cfg.items or m.items.path, **enc)
    return Mapping(events=events, items=items, more_events=tuple(sources[1:])), from_log


def _paths(events: str | None) -> list[str]:
    """`events` as the files it names: one, or several separated by commas (clicks.dat,buys.dat)."""
    return [p.strip() for p in events.split(",") if p.strip()] if events else []


def _with_title(m: Mapping, raw_columns: list[str]) -> Mapping:
    """RecBole `.item` files name their title field title, movie_title or name."""
    if S.TITLE in m.items.columns:
        return m
    for c in ("title", "movie_title", "name", "item_name"):
        if c in raw_columns:
            extra = {k: c2 for k, c2 in ((S.CATEGORY, "categories"), (S.CATEGORY, "genre"), (S.BRAND, "brand"),
                                         (S.PRICE, "price"), (S.DESCRIPTION, "description")) if c2 in raw_columns}
            return replace(m, items=replace(m.items, columns={**m.items.columns, S.TITLE: c, **extra}))
    raise ConfigError(f"mapping.items.columns.title: not set, and the items file has no title / movie_title / name "
                      f"column; it has: {', '.join(raw_columns)}")


REJECTED_SCHEMA = pa.schema([("table", pa.string()), (S.REASON, pa.string()), (S.RAW, pa.string())])
PROGRESS_EVERY_S = 10.0  # a long import prints its progress at most this often
REDUCE_EVERY = 8  # items from the events file: chunks' partial catalogs are combined this often


class _Output:
    """The import's three tables, written as chunks arrive (events and rejected rows) or at the end
    (items), and the counts its summary and checks need."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.writers: dict[str, tuple] = {}
        self.raw = {"events": 0, "items": 0}
        self.kept = {"events": 0, "items": 0}
        self.reasons: dict[str, Counter] = {"events": Counter(), "items": Counter()}  # rows rejected
        self.blanked: dict[str, Counter] = {"events": Counter(), "items": Counter()}  # rows kept, a value blank
        self.example: dict[str, str] = {}
        self.users = pl.Series(S.USER_ID, [], pl.String)
        self.swallowed: dict[str, list] = {}
        self.unknown_types: Counter = Counter()  # event_type values outside the contract
        self.notes: list[str] = []  # warnings found while reading
        self.guests = 0  # events without a user id that took their session as the shopper
        self.nobody = 0  # events with neither a user id nor a session: the feature job quarantines them
        self.event_columns: list[str] = []  # several events files: the columns any maps, in every file's rows

    def _write(self, name: str, table: pa.Table) -> None:
        if name not in self.writers:
            fs, inner = A.resolve(self.output)
            fs.create_dir(inner, recursive=True)
            stream = fs.open_output_stream(A.join(inner, f"{name}.parquet"))
            self.writers[name] = (stream, pq.ParquetWriter(stream, table.schema))
        self.writers[name][1].write_table(table)

    def events(self, df: pl.DataFrame) -> None:
        # Nullable: a blank user, time, type, item id or title is the feature job's to quarantine,
        # with its reason and row, not a cast error here that names neither.
        df = self._guests(df)
        df = df.with_columns(pl.lit(None).alias(c) for c in self.event_columns if c not in df.columns)
        schema = _nullable(pa.schema([f for f in S.EVENTS_SCHEMA if f.name in df.columns]))
        self._write("events", df.to_arrow(compat_level=pl.CompatLevel.oldest()).select(schema.names).cast(schema))
        self.kept["events"] += df.height
        if S.EVENT_TYPE in df.columns:
            odd = df.get_column(S.EVENT_TYPE).drop_nulls()
            odd = odd.filter(~odd.is_in(list(S.EVENT_TYPES)) & (odd.str.strip_chars() != ""))
            self.unknown_types.update(dict(odd.value_counts().iter_rows()))
        if S.USER_ID in df.columns:
            self.users = pl.concat([self.users, df.get_column(S.USER_ID).drop_nulls().unique()]).unique()

    def _guests(self, df: pl.DataFrame) -> pl.DataFrame:
        """A guest checkout or a visitor who never signed in: no user id, but a session. The session
        is the shopper (`anon:<session_id>`, as the Online Retail preset does with an invoice), so
        the event still counts for popularity, co-occurrence and the session's own recommendations
        instead of being quarantined as `null_user_id`. A mapping without a user id column (a session
        log) makes every event such a guest's."""
        if S.USER_ID not in df.columns:
            df = df.with_columns(pl.lit(None, pl.String).alias(S.USER_ID))
        user = pl.col(S.USER_ID)
        no_user = user.is_null() | (user.str.strip_chars() == "")
        if S.SESSION_ID not in df.columns:
            self.nobody += int(df.select(no_user.sum()).item())
            return df
        session = pl.col(S.SESSION_ID)
        has_session = session.is_not_null() & (session.str.strip_chars() != "")
        guest = no_user & has_session
        self.nobody += int(df.select((no_user & ~has_session).sum()).item())
        n = int(df.select(guest.sum()).item())
        self.guests += n
        return df.with_columns(pl.when(guest).then(S.ANONYMOUS + session).otherwise(user).alias(S.USER_ID)) if n else df

    def rejected(self, table: str, rej: pl.DataFrame) -> None:
        """Rows not imported -> rejected.parquet; rows imported with a value left blank (`kept`) -> blanked.parquet."""
        kept = rej.get_column(KEPT) if KEPT in rej.columns else pl.Series(KEPT, [False] * rej.height, pl.Boolean)
        for name, part, counts in (("rejected", rej.filter(~kept), self.reasons[table]),
                                   ("blanked", rej.filter(kept), self.blanked[table])):
            if not part.height:
                continue
            counts.update(dict(part.group_by(S.REASON).len().iter_rows()))
            self.example.setdefault(f"{name} {table}", part.get_column(S.RAW)[0])
            self._write(name, part.select(pl.lit(table).alias("table"), S.REASON, S.RAW).to_arrow().cast(REJECTED_SCHEMA))

    def check_quotes(self, chunk: pa.Table) -> None:
        """Count lines an unbalanced quote swallowed, per file (CSV and TSV; RecBole is unquoted)."""
        source = text_source(chunk)
        if source is not None and source[0] in ("csv", "tsv"):
            lines, start = swallowed_rows(chunk, source[1])
            if lines:
                seen = self.swallowed.setdefault(source[2], [0, start])
                seen[0] += lines

    def finish(self, items: pl.DataFrame) -> None:
        write_table(self.output, "items", items, _nullable(S.ITEMS_SCHEMA))
        self.kept["items"] = items.height
        for name in ("rejected", "blanked"):
            if name not in self.writers:
                self._write(name, REJECTED_SCHEMA.empty_table())
        for stream, writer in self.writers.values():
            writer.close()
            stream.close()


def run(cfg: ImportEventsConfig) -> dict:
    if cfg.encoding:
        check_encoding(cfg.encoding, "encoding")
    if cfg.chunk_rows < 1:
        raise ConfigError(f"chunk_rows: {cfg.chunk_rows}; allowed: >= 1")
    m, from_log = _resolve_mapping(cfg)
    out = _Output(cfg.output)
    if m is None:  # UCI Online Retail (either layout): invoices, cancellations, items from the log
        if not cfg.events:
            raise ConfigError("events: the UCI Online Retail file (Parquet or CSV) is required")
        raw = pl.from_arrow(read_table(cfg.events, encoding=cfg.encoding or "utf-8", where="encoding (--set encoding=...)"))
        events, items, rejected = import_online_retail(raw)
        out.raw["events"] = raw.height
        out.events(events)
        out.rejected("events", pl.DataFrame({S.REASON: rejected[S.REASON], S.RAW: [
            json.dumps(r, default=str) for r in rejected.drop(S.REASON).iter_rows(named=True)]},
            schema={S.REASON: pl.String, S.RAW: pl.String}))
    else:
        items = _import_mapped(cfg, m, from_log, out)
    out.finish(items)
    warnings = out.notes + [f"WARNING: {path}: {n:,} line(s) inside a quoted value look like whole rows (the value starts "
                f"{start!r}): an unbalanced double quote makes CSV read the rows after it as one value, and those "
                "rows are not imported; correct the quote" for path, (n, start) in out.swallowed.items()]
    if out.unknown_types:  # imported as given; the feature job quarantines them, so say it now
        n, top = sum(out.unknown_types.values()), out.unknown_types.most_common(5)
        guesses = [(v, guess_event_type(v)) for v, _ in top]
        example = ", ".join(f"{v}: {g}" for v, g in guesses if g) or f"{top[0][0]}: <event type>"
        warnings.append(f"WARNING: event_type: {n:,} events carry values that are not event types of the contract ("
                        + ", ".join(f"{v!r} {c:,}" for v, c in top) + (", ..." if len(out.unknown_types) > 5 else "")
                        + f"); the feature job will quarantine them as {S.Reason.UNKNOWN_EVENT_TYPE.value}. Map them in "
                        f"the mapping's values.event_type, e.g. {{{example}}}; the event types: " + ", ".join(S.EVENT_TYPES))
    if out.guests:
        warnings.append(f"NOTE: {out.guests:,} events have no user id but a session: each session is its own "
                        f"shopper ({S.USER_ID} {S.ANONYMOUS}<session_id>), as for a guest checkout")
    if out.nobody:
        warnings.append(f"WARNING: events with neither a user id nor a session: {out.nobody:,}. There is no shopper "
                        "to fold them into, so the feature job will quarantine them as "
                        f"{S.Reason.NULL_USER_ID.value} and they count for nothing, popularity included; map the "
                        f"export's visitor, cookie or session column as {S.USER_ID} or {S.SESSION_ID} to keep them")
    for table in ("events", "items"):
        if out.raw[table] and not out.kept[table]:  # stop here, naming why, not stages later at "no valid events"
            counts = out.reasons[table].most_common()
            hint = (" (a text time needs ISO 8601 or the mapping's ts_format; numbers need ts_unit)"
                    if out.reasons[table].get("unparseable_ts") else "")
            raise ValueError(f"{table}: all {out.raw[table]:,} rows were rejected ("
                             + ", ".join(f"{r} {n:,}" for r, n in counts) + f"){hint}; e.g. "
                             f"{out.example.get('rejected ' + table, '?')}; every row is in {cfg.output}/rejected.parquet")
    for table in ("events", "items"):
        for reason, n in out.blanked[table].most_common():
            col = reason.removeprefix("unparseable_")
            comma = col in (S.PRICE, S.QUANTITY) and m is not None and getattr(m, table).decimal_separator == "."
            sep = f" (a decimal comma needs mapping.{table}.decimal_separator: \",\")" if comma else ""
            warnings.append(f"WARNING: {table}.{col}: {n:,} value(s) could not be read{sep}; those rows are imported "
                            f"with {col} blank and listed in blanked.parquet; e.g. {out.example['blanked ' + table]}")
    rejected_counts = out.reasons["events"] + out.reasons["items"]
    return {"raw_rows": out.raw, "events": out.kept["events"], "items": out.kept["items"],
            "items_from_events": from_log, "warnings": warnings, "users": out.users.len(),
            "rejected": dict(rejected_counts.most_common()),
            "blanked": {t: dict(out.blanked[t].most_common()) for t in ("events", "items") if out.blanked[t]},
            "output": cfg.output}


def _check_seen(m: TableMapping, table: str, seen: dict[str, None], out: _Output) -> None:
    """A JSON record may leave a mapped field out; a field that no record of the file has is a
    mistake in the mapping (other formats stop at the first chunk without the column). Of several
    columns for one field (the first non-blank), one is enough; the others are warned about.
    `seen`: the columns read, in the file's order."""
    for k, spec in m.columns.items():
        names = (spec,) if isinstance(spec, str) else spec
        missing = [v for v in names if v not in seen]
        if len(missing) == len(names):
            cols = list(seen)
            what, hint = (("no property name or column", "") if m.properties else
                          ("in no record or column", column_hint(table, cols)))
            raise SchemaError(f"mapping.{table}.columns.{k}: {missing[0]!r} is {what} of {m.path}; "
                              f"it has: {', '.join(cols)}{hint}")
        if missing:
            out.notes.append(f"WARNING: mapping.{table}.columns.{k}: {', '.join(map(repr, missing))} in no record of "
                             f"{m.path}; the field came from {', '.join(repr(v) for v in names if v in seen)}")


def _pivoted(raw: pa.Table, m: TableMapping) -> tuple[pa.Table, dict[str, None]]:
    """A long catalog as a row per item (features/data/pivot.py), and the names a mapping may use:
    the item id column and every property name in the file."""
    assert m.properties is not None
    item = m.columns[S.ITEM_ID]
    assert isinstance(item, str)  # check_mapping: one column
    df = pl.from_arrow(raw)
    assert isinstance(df, pl.DataFrame)
    wide = pivot_properties(df, m.properties, item, "mapping.items", used=set(used_columns(m)))
    return wide.to_arrow(), dict.fromkeys([item, *property_names(df, m.properties)])


def _names(spec: str | tuple[str, ...]) -> tuple[str, ...]:
    return (spec,) if isinstance(spec, str) else spec


def _named(table: str, path: str | None, chunks):
    """The chunks of a file; Polars' "empty CSV file" error names no file, so name it."""
    try:
        yield from chunks
    except (pl.exceptions.NoDataError, pa.ArrowInvalid) as e:
        if isinstance(e, pa.ArrowInvalid) and "Empty CSV file" not in str(e):
            raise
        raise ValueError(f"{table}: {path} is empty (no header, no rows)") from None


def _import_mapped(cfg: ImportEventsConfig, m: Mapping, from_log: bool, out: _Output) -> pl.DataFrame:
    """Stream each events file through its mapping a chunk at a time; returns the items."""
    def where(name: str) -> str:
        return "encoding (--set encoding=...)" if cfg.mapping in PRESETS else f"mapping.{name}.encoding"

    sources = [m.events, *m.more_events]
    for k, source in enumerate(sources):  # before reading: a setting's mistake is named, not the reader's error
        check_mapping(source, "events", _where(k))
    if not from_log and "recbole" not in (m.events.format, m.items.format):  # (RecBole's title is found on reading)
        check_mapping(m.items, "items")
    items = None if from_log else _read_catalog(m, out, where("items"))
    if m.more_events:  # one events table: a column one file maps is blank in the others' rows
        out.event_columns = [c for c in S.EVENTS_SCHEMA.names if c in (S.EVENT_ID, S.USER_ID)
                             or any(c in e.columns or c in e.constants for e in sources)]
    ids, partials, first_row, seen, t0 = EventIds(), [], 0, {}, time.monotonic()
    said = [0.0]
    for k, source in enumerate(sources):
        seen_here: dict[str, None] = {}
        fill = FillDown(source.fill_down, source.fill_down_by, f"mapping.{_where(k)}")  # carries across chunks
        join = Joiner(source.join, f"mapping.{_where(k)}")  # the order and the customer of each line
        chunks = iter_tables(source.path, source.format, source.delimiter, source.encoding, where(_where(k)),
                             cfg.chunk_rows, explode=source.explode, key_values=source.key_values,
                             column_names=source.column_names, sheet=source.sheet)
        rows_before = out.raw["events"]
        for chunk in _named("events", source.path, chunks):
            seen_here.update(dict.fromkeys(chunk.column_names))
            out.raw["events"] += chunk.num_rows
            out.check_quotes(chunk)
            chunk = join(fill(chunk))
            seen_here.update(dict.fromkeys(chunk.column_names))
            events, ev_rej = apply(chunk, source, "events", ids, _where(k))
            out.events(events)
            out.rejected("events", ev_rej)
            if from_log:  # with several files, each gives the item columns it has (merged by time)
                item_chunk, item_map = _item_view(chunk, m.items, source) if m.more_events else (chunk, m.items)
                part, it_rej = item_fields(item_chunk, item_map, source, first_row, every=m.items)
                partials.append(part)
                out.raw["items"] += chunk.num_rows
                out.rejected("items", it_rej)
                if len(partials) >= REDUCE_EVERY:
                    partials = [reduce_item_fields(partials, m.items)]
            first_row += chunk.num_rows
            _progress(out, t0, said)
        _check_seen(source, _where(k), seen_here, out)
        if out.raw["events"] == rows_before:  # say it here, not stages later as "no valid events"
            raise ValueError(f"events: {source.path} has no rows (a header and nothing else); nothing to learn from")
        seen.update(seen_here)
    if from_log:
        _check_seen(m.items, "items", seen, out)
        items = merge_item_fields(partials, m.items)
        if not items.height and not out.reasons["items"]:
            raise ValueError(f"items: no row of {m.events.path} names an item in its column "
                             f"{m.items.columns[S.ITEM_ID]!r} (mapping.items.columns.item_id)")
    assert items is not None
    return items


def _where(k: int) -> str:
    """The mapping key of the k-th events file, for messages: events, then events[1], events[2], ..."""
    return "events" if k == 0 else f"events[{k}]"


def _item_view(chunk: pa.Table, items: TableMapping, source: TableMapping) -> tuple[pa.Table, TableMapping]:
    """One of several events files as the items' columns see it: its item id column under the name
    the items mapping gives it (the first file's), and of the other item columns those it has; a
    file without the title's column leaves the title to the others (merged by time). A column in
    no file is still an error (`_check_seen` over them all)."""
    id_col, own = items.columns[S.ITEM_ID], source.columns.get(S.ITEM_ID)
    if isinstance(id_col, str) and isinstance(own, str) and own != id_col and own in chunk.column_names:
        chunk = chunk.rename_columns([id_col if c == own else f"{c}\x1f" if c == id_col else c
                                      for c in chunk.column_names])
    cols = {k: v for k, v in items.columns.items() if all(c in chunk.column_names for c in _names(v))}
    return chunk, replace(items, columns=cols, constants=items.constants if S.TITLE in cols else
                          {S.TITLE: None, **items.constants})


def _progress(out: _Output, t0: float, said: list[float]) -> None:
    """A long import says how far it is, at most every PROGRESS_EVERY_S ("[" lines stay out of the
    pipeline's stage summary)."""
    now = time.monotonic()
    if now - said[0] >= PROGRESS_EVERY_S and now - t0 >= PROGRESS_EVERY_S:
        said[0] = now
        print(f"[import_events] {out.raw['events']:,} event rows read, {out.kept['events']:,} kept "
              f"(t={now - t0:.0f}s)", flush=True)


def _read_catalog(m: Mapping, out: _Output, where: str) -> pl.DataFrame:
    """The items file, read whole (a catalog is small next to its event log), through its mapping."""
    parts = list(_named("items", m.items.path, iter_tables(
        m.items.path, m.items.format, m.items.delimiter, m.items.encoding, where, chunk_rows=1 << 62,
        explode=m.items.explode, key_values=m.items.key_values, column_names=m.items.column_names,
        sheet=m.items.sheet)))
    for part in parts:
        out.check_quotes(part)
    it_raw = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
    if not it_raw.num_rows:
        raise ValueError(f"items: {m.items.path} has no rows (a header and nothing else); the catalog needs items")
    it_raw = Joiner(m.items.join, "mapping.items")(FillDown(m.items.fill_down, m.items.fill_down_by, "mapping.items")(it_raw))
    if m.items.parent:  # a variation's blank text from its parent row (WooCommerce)
        text = [c for k in JOINABLE if k in m.items.columns for c in _names(m.items.columns[k])]
        it_raw = inherit(it_raw, m.items.parent, str(m.items.columns[S.ITEM_ID]), text, "mapping.items")
    rows = it_raw.num_rows
    if m.items.properties:  # one row per item and property -> a row per item, a column per property used
        it_raw, seen = _pivoted(it_raw, m.items)
    else:
        seen = dict.fromkeys([*(c for part in parts for c in part.column_names), *it_raw.column_names])
    _check_seen(m.items, "items", seen, out)
    if m.events.format == "recbole" or m.items.format == "recbole":
        m = _with_title(m, it_raw.column_names)
    items, it_rej = apply(it_raw, m.items, "items")
    out.raw["items"] = rows
    repeated = items.height - items.get_column(S.ITEM_ID).n_unique()
    if repeated:  # a long catalog read as one item per row would be many one-property items
        out.notes.append(f"WARNING: items: {repeated:,} row(s) repeat an item id of an earlier row; the feature "
                         f"job keeps each item's first row and quarantines the rest as "
                         f"{S.Reason.DUPLICATE_ITEM_ID.value}. A catalog with a row per item and property (item, "
                         "property, value) needs mapping.items.properties (docs/data.md); one with a row per store "
                         "view or language keeps the first (put the shop's own first)")
    out.rejected("items", it_rej)
    return items


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Import a shop's events and items through a column mapping", "import_events.yaml", argv)

    def body() -> int:
        r = run(load_job_config(ImportEventsConfig, args))
        print(f"import: {r['raw_rows']['events']:,} event rows -> {r['events']:,} events of {r['users']:,} users; "
              f"{r['raw_rows']['items']:,} item rows{' (the events file)' if r['items_from_events'] else ''} -> "
              f"{r['items']:,} items -> {r['output']}", flush=True)
        for reason, n in r["rejected"].items():
            print(f"  rejected {reason:<24} {n:>8,}  (in rejected.parquet)", flush=True)
        for w in r["warnings"]:
            print(w, flush=True)
        return 0

    return run_job("import_events", body)


if __name__ == "__main__":
    sys.exit(main())
