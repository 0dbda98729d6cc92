"""Import a shop's export (CSV, TSV, Parquet or RecBole atomic files) into the canonical tables.

    python -m jobs.import_events --set mapping=shop_mapping.yaml --set output=data/canonical/shop
    python -m jobs.import_events --set mapping=recbole --set events=ml.inter --set items=ml.item
    python -m jobs.import_events --set mapping=uci-online-retail --set events=online_retail_II.csv

`mapping` is a YAML file (features/data/mapping.py, docs/data.md) or a preset: `recbole` (RecBole's
usual field names) or `uci-online-retail` (either UCI Online Retail layout; items come from the
log itself). `events` / `items` override the paths in the mapping. Writes <output>/events.parquet,
items.parquet and rejected.parquet (rows whose values could not be typed, with a reason and the
original row) and prints counts; every input row is in exactly one of them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace

import polars as pl

from features.config import ConfigError
from features.data import schema as S
from features.data.mapping import Mapping, apply, check_encoding, load_mapping, read_table, recbole_defaults
from features.data.online_retail import import_online_retail
from jobs.common import load_job_config, parse_args, run_job, write_table

PRESETS = ("recbole", "uci-online-retail")


@dataclass(frozen=True)
class ImportEventsConfig:
    mapping: str | None = None   # a mapping YAML (local or URI) or a preset: recbole | uci-online-retail
    events: str | None = None    # the shop's events file/folder/URI; overrides mapping.events.path
    items: str | None = None     # the shop's items file/folder/URI; overrides mapping.items.path
    output: str = "data/canonical/shop"
    # The text files' character set (utf-8 when null; cp1252 or latin-1 for many spreadsheet
    # exports): for a preset, or over both tables of a mapping file (which can also set its own).
    encoding: str | None = None


def _resolve_mapping(cfg: ImportEventsConfig) -> Mapping | None:
    if cfg.mapping is None:
        raise ConfigError(f"mapping: required; a mapping YAML file or a preset ({', '.join(PRESETS)})")
    if cfg.mapping == "uci-online-retail":
        return None
    m = recbole_defaults(None, None) if cfg.mapping == "recbole" else load_mapping(cfg.mapping)
    enc = {"encoding": cfg.encoding} if cfg.encoding else {}
    return Mapping(events=replace(m.events, path=cfg.events or m.events.path, **enc),
                   items=replace(m.items, path=cfg.items or m.items.path, **enc))


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
    m = _resolve_mapping(cfg)
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
        ev_raw, it_raw = (read_table(t.path, t.format, t.delimiter, t.encoding,
                                     "encoding (--set encoding=...)" if cfg.mapping in PRESETS else f"mapping.{name}.encoding")
                          for name, t in (("events", m.events), ("items", m.items)))
        if m.events.format == "recbole" or m.items.format == "recbole":
            m = _with_title(m, it_raw.column_names)
        events, ev_rej = apply(ev_raw, m.events, "events")
        items, it_rej = apply(it_raw, m.items, "items")
        rejected = pl.concat([ev_rej.select(pl.lit("events").alias("table"), pl.all()),
                              it_rej.select(pl.lit("items").alias("table"), pl.all())])
        raw_rows = {"events": ev_raw.num_rows, "items": it_raw.num_rows}
    write_table(cfg.output, "events", events, S.EVENTS_SCHEMA)
    write_table(cfg.output, "items", items, S.ITEMS_SCHEMA)
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
    return {"raw_rows": raw_rows, "events": events.height, "items": items.height,
            "users": events.get_column(S.USER_ID).n_unique() if events.height else 0,
            "rejected": {r: int(n) for r, n in reasons.select(S.REASON, "len").iter_rows()} if rejected.height else {},
            "output": cfg.output}


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Import a shop's events and items through a column mapping", "import_events.yaml", argv)

    def body() -> int:
        r = run(load_job_config(ImportEventsConfig, args))
        print(f"import: {r['raw_rows']['events']:,} event rows -> {r['events']:,} events of {r['users']:,} users; "
              f"{r['raw_rows']['items']:,} item rows -> {r['items']:,} items -> {r['output']}", flush=True)
        for reason, n in r["rejected"].items():
            print(f"  rejected {reason:<24} {n:>8,}  (in rejected.parquet)", flush=True)
        return 0

    return run_job("import_events", body)


if __name__ == "__main__":
    sys.exit(main())
