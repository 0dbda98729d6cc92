"""Import a shop's export (CSV, TSV, Parquet or RecBole atomic files) into the canonical tables.

    python -m jobs.import_events --set mapping=shop_mapping.yaml --set output=data/canonical/shop
    python -m jobs.import_events --set mapping=recbole --set events=ml.inter --set items=ml.item
    python -m jobs.import_events --set mapping=uci-online-retail --set events=online_retail_II.csv

`mapping` is a YAML file (features/data/mapping.py, docs/data.md) or a preset: `recbole` (RecBole's
usual field names) or `uci-online-retail` (either UCI Online Retail layout; items come from the
log itself). `events` / `items` override the paths in the mapping; a mapping whose items have no
path of their own reads them from the events file (one item per id, its latest fields). Writes
<output>/events.parquet, items.parquet and rejected.parquet (rows whose values could not be typed,
with a reason and the original row) and prints counts; every input row is in exactly one of them
(an events file's item fields: merged per item, or rejected).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace

import polars as pl
import pyarrow as pa

from features.config import ConfigError
from features.data import schema as S
from features.data.mapping import (Mapping, TableMapping, apply, check_encoding, format_of, items_from_events,
                                   load_mapping, read_table, recbole_defaults, swallowed_rows)
from features.data.online_retail import import_online_retail
from jobs.common import load_job_config, parse_args, run_job, write_table

PRESETS = ("recbole", "uci-online-retail")


@dataclass(frozen=True)
class ImportEventsConfig:
    mapping: str | None = None   # a mapping YAML (local or URI) or a preset: recbole | uci-online-retail
    events: str | None = None    # the shop's events file/folder/URI; overrides mapping.events.path
    items: str | None = None     # the shop's items file/folder/URI; overrides mapping.items.path (none:
    #                              the mapping's, or the events file when the mapping gives no items path)
    output: str = "data/canonical/shop"
    # The text files' character set (utf-8 when null; cp1252 or latin-1 for many spreadsheet
    # exports): for a preset, or over both tables of a mapping file (which can also set its own).
    encoding: str | None = None


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


def _resolve_mapping(cfg: ImportEventsConfig) -> tuple[Mapping | None, bool]:
    """(the mapping with this run's paths, whether the items come from the events file)."""
    if cfg.mapping is None:
        raise ConfigError(f"mapping: required; a mapping YAML file or a preset ({', '.join(PRESETS)})")
    if cfg.mapping == "uci-online-retail":
        return None, False
    m = recbole_defaults(None, None) if cfg.mapping == "recbole" else load_mapping(cfg.mapping)
    enc = {"encoding": cfg.encoding} if cfg.encoding else {}
    from_log = (cfg.mapping not in PRESETS and not cfg.items and bool(m.items.columns)
                and (not m.items.path or m.items.path == m.events.path))
    events = replace(m.events, path=cfg.events or m.events.path, **enc)
    if not events.path:
        raise ConfigError("events: no events file; set mapping.events.path or pass events (make run EVENTS=...)")
    if not (cfg.items or m.items.path or from_log):
        raise ConfigError("items: no items file; pass items (make run ITEMS=...), set mapping.items.path, or map the "
                          "item columns of the events file (mapping.items.columns without a path; docs/data.md)")
    items = replace(m.items, path=events.path, format=events.format, delimiter=events.delimiter,
                    encoding=events.encoding) if from_log else replace(m.items, path=cfg.items or m.items.path, **enc)
    return Mapping(events=events, items=items), from_log


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


def run(cfg: ImportEventsConfig) -> dict:
    if cfg.encoding:
        check_encoding(cfg.encoding, "encoding")
    m, from_log = _resolve_mapping(cfg)
    warnings: list[str] = []
    if m is None:  # UCI Online Retail (either layout): invoices, cancellations, items from the log
        if not cfg.events:
            raise ConfigError("events: the UCI Online Retail file (Parquet or CSV) is required")
        raw = pl.from_arrow(read_table(cfg.events, encoding=cfg.encoding or "utf-8", where="encoding (--set encoding=...)"))
        events, items, rejected = import_online_retail(raw)
        rejected = pl.DataFrame({"table": ["events"] * rejected.height, S.REASON: rejected[S.REASON],
                                 S.RAW: [json.dumps(r, default=str) for r in rejected.drop(S.REASON).iter_rows(named=True)]},
                                schema={"table": pl.String, S.REASON: pl.String, S.RAW: pl.String})
        raw_rows = {"events": raw.height, "items": 0}
    else:
        def read(name: str, t: TableMapping) -> pa.Table:
            return read_table(t.path, t.format, t.delimiter, t.encoding,
                              "encoding (--set encoding=...)" if cfg.mapping in PRESETS else f"mapping.{name}.encoding")

        ev_raw = read("events", m.events)
        it_raw = ev_raw if from_log else read("items", m.items)
        for t, tbl in ((m.events, ev_raw), (m.items, it_raw))[:1 if from_log else 2]:
            if format_of(t.path, t.format) in ("csv", "tsv"):
                lines, start = swallowed_rows(tbl, t.delimiter or ("\t" if format_of(t.path, t.format) == "tsv" else ","))
                if lines:
                    warnings.append(f"WARNING: {t.path}: {lines:,} line(s) inside a quoted value look like whole rows "
                                    f"(the value starts {start!r}): an unbalanced double quote makes CSV read the rows "
                                    "after it as one value, and those rows are not imported; correct the quote")
        if m.events.format == "recbole" or m.items.format == "recbole":
            m = _with_title(m, it_raw.column_names)
        events, ev_rej = apply(ev_raw, m.events, "events")
        items, it_rej = items_from_events(ev_raw, m.items, m.events) if from_log else apply(it_raw, m.items, "items")
        if from_log and not items.height and not it_rej.height:
            raise ValueError(f"items: no row of {m.events.path} names an item in its column "
                             f"{m.items.columns[S.ITEM_ID]!r} (mapping.items.columns.item_id)")
        rejected = pl.concat([ev_rej.select(pl.lit("events").alias("table"), pl.all()),
                              it_rej.select(pl.lit("items").alias("table"), pl.all())])
        raw_rows = {"events": ev_raw.num_rows, "items": it_raw.num_rows}
    # Nullable: a blank user, time, type, item id or title is the feature job's to quarantine, with
    # its reason and row, not a cast error here that names neither.
    write_table(cfg.output, "events", events, _nullable(S.EVENTS_SCHEMA))
    write_table(cfg.output, "items", items, _nullable(S.ITEMS_SCHEMA))
    write_table(cfg.output, "rejected", rejected)
    reasons = rejected.group_by(S.REASON).len().sort("len", descending=True) if rejected.height else rejected
    for table, kept in (("events", events.height), ("items", items.height)):
        if raw_rows[table] and not kept:  # stop here, naming why, not stages later at "no valid events"
            mine = rejected.filter(pl.col("table") == table)
            counts = mine.group_by(S.REASON).len().sort("len", descending=True)
            hint = (" (a text time needs ISO 8601 or the mapping's ts_format; numbers need ts_unit)"
                    if "unparseable_ts" in counts[S.REASON].to_list() else "")
            raise ValueError(f"{table}: all {raw_rows[table]:,} rows were rejected ("
                             + ", ".join(f"{r} {n:,}" for r, n in counts.iter_rows()) + f"){hint}; e.g. "
                             f"{mine[S.RAW][0] if mine.height else '?'}; every row is in {cfg.output}/rejected.parquet")
    return {"raw_rows": raw_rows, "events": events.height, "items": items.height, "items_from_events": from_log,
            "warnings": warnings,
            "users": events.get_column(S.USER_ID).drop_nulls().n_unique() if events.height else 0,
            "rejected": {r: int(n) for r, n in reasons.select(S.REASON, "len").iter_rows()} if rejected.height else {},
            "output": cfg.output}


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
