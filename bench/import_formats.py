"""One shop log in every export format the importer reads: the same events, at what cost.

    python -m bench.import_formats [--rows 0] [--source data/canonical/online_retail]
                                   [--out bench/results/import_formats.json]

Writes the bundled Online Retail log's canonical events (all 537,623, or the first `--rows`) and
its catalog as a shop's tools would export them: a flat CSV; JSON lines in the shape of an event
tracker (Segment's e-commerce spec: one record per order with its products in a list, nested
`context` and `properties`, each product with its order line's id, gzipped); an Excel workbook (numbers as numbers, times as dates);
Parquet; a relational export (order lines, and the orders with their time, shopper and type:
`join`); purchases and returns as two files (`events` as a list); and a long catalog of (item,
property, value) rows (`properties`). Each goes through `python -m jobs.import_events` with its own mapping, in a fresh
process as a user would run it. Reported: wall seconds, peak resident memory, and whether the
events and items it wrote equal the Parquet import's, value for value. Writes
bench/results/import_formats.json with the commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from bench.feature_job import RESULTS, machine, write_result
from features.artifacts import git_commit

ROOT = Path(__file__).resolve().parents[1]
CANONICAL = ROOT / "data" / "canonical" / "online_retail"
COLUMNS = "{event_id: id, ts: ts, user_id: user, session_id: session, event_type: type, item_id: sku, quantity: qty, price: price}"
MAPPINGS = {
    "parquet": f"events:\n  path: events.parquet\n  columns: {COLUMNS}\nitems:\n  path: items.parquet\n  columns: {{item_id: sku, title: name}}\n",
    "csv": f"events:\n  path: events.csv\n  columns: {COLUMNS}\nitems:\n  path: items.csv\n  columns: {{item_id: sku, title: name}}\n",
    "xlsx": f"events:\n  path: events.xlsx\n  columns: {COLUMNS}\nitems:\n  path: items.xlsx\n  columns: {{item_id: sku, title: name}}\n",
    "jsonl": ("events:\n  path: events.jsonl.gz\n  explode: properties.products\n"
              "  columns: {event_id: properties.products.line_id, ts: timestamp, user_id: userId, session_id: context.sessionId,\n"
              "            event_type: event, item_id: properties.products.product_id,\n"
              "            quantity: properties.products.quantity, price: properties.products.price}\n"
              "  values: {event_type: {Order Completed: purchase, Order Refunded: return}}\n"
              "items:\n  path: items.jsonl\n  columns: {item_id: sku, title: name}\n"),
    # an order's lines in one table, the order (time, shopper, type) in another: `join`
    "relational": ("events:\n  path: lines.csv\n  join: [{path: orders.csv, key: order}]\n"
                   f"  columns: {COLUMNS}\nitems:\n  path: items.csv\n  columns: {{item_id: sku, title: name}}\n"),
    # purchases and returns as two files, each its own type: `events` as a list
    "two_files": ("events:\n" + "".join(f"  - path: {t}s.csv\n    columns: {COLUMNS.replace(', event_type: type', '')}\n"
                                         f"    constants: {{event_type: {t}}}\n" for t in ("purchase", "return"))
                  + "items:\n  path: items.csv\n  columns: {item_id: sku, title: name}\n"),
    # the catalog as (item, property, value) rows: `properties`
    "long_items": (f"events:\n  path: events.csv\n  columns: {COLUMNS}\nitems:\n  path: item_properties.csv\n"
                   "  properties: {key: property, value: value}\n  columns: {item_id: sku, title: name}\n"),
}
EVENT_FILES = {"jsonl": ["events.jsonl.gz"], "relational": ["lines.csv", "orders.csv"],
               "two_files": ["purchases.csv", "returns.csv"], "long_items": ["events.csv"]}


def _flat(events: pl.DataFrame) -> pl.DataFrame:
    """The canonical events under a shop's column names; an event's id is its order's plus its position."""
    return events.select(pl.col("event_id").alias("id"), pl.col("ts"), pl.col("user_id").alias("user"),
                         pl.col("session_id").alias("session"), pl.col("event_type").alias("type"),
                         pl.col("item_id").alias("sku"), pl.col("quantity").alias("qty"), pl.col("price"))


def _write(d: Path, events: pl.DataFrame, items: pl.DataFrame) -> None:
    import xlsxwriter

    flat, cat = _flat(events), items.select(pl.col("item_id").alias("sku"), pl.col("title").alias("name"))
    flat.write_parquet(d / "events.parquet")
    cat.write_parquet(d / "items.parquet")
    flat.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).write_csv(d / "events.csv")
    cat.write_csv(d / "items.csv")
    for name, df in (("events", flat), ("items", cat)):
        wb = xlsxwriter.Workbook(str(d / f"{name}.xlsx"), {"constant_memory": True})
        ws, when = wb.add_worksheet(name), wb.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        ws.write_row(0, 0, df.columns)
        for i, row in enumerate(df.iter_rows(), 1):
            for j, v in enumerate(row):
                if isinstance(v, dt.datetime):
                    ws.write_datetime(i, j, v.replace(tzinfo=None), when)
                elif isinstance(v, (int, float)):
                    ws.write_number(i, j, v)
                elif v is not None:
                    ws.write_string(i, j, v)
        wb.close()
    kinds = {"purchase": "Order Completed", "return": "Order Refunded"}
    with gzip.open(d / "events.jsonl.gz", "wt") as f:  # a record per order (invoice), type and time, lines in order
        for (session, kind, ts), g in events.group_by(["session_id", "event_type", "ts"], maintain_order=True):
            rows, when = g.to_dicts(), ts.strftime("%Y-%m-%dT%H:%M:%SZ")
            f.write(json.dumps({"messageId": f"{kind}-{session}-{when}", "timestamp": when,
                                "userId": rows[0]["user_id"], "event": kinds[kind], "context": {"sessionId": session},
                                "properties": {"products": [{"line_id": r["event_id"], "product_id": r["item_id"],
                                                             "quantity": r["quantity"], "price": r["price"]}
                                                            for r in rows]}}) + "\n")
    with open(d / "items.jsonl", "w") as f:
        for r in cat.iter_rows(named=True):
            f.write(json.dumps(r) + "\n")
    text = flat.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    # an order's lines, and each order's time, shopper and type (43 invoices' lines span two minutes: an
    # order here is an invoice at one time, so that the split loses nothing)
    text = text.with_columns(pl.concat_str([pl.col("session"), pl.col("ts")], separator="@").alias("order"))
    text.drop("ts", "user", "type").write_csv(d / "lines.csv")
    text.select("order", "ts", "user", "type").unique("order", keep="first", maintain_order=True).write_csv(d / "orders.csv")
    text = text.drop("order")
    for t in ("purchase", "return"):
        text.filter(pl.col("type") == t).drop("type").write_csv(d / f"{t}s.csv")
    (cat.with_columns(pl.lit("name").alias("property")).select("sku", "property", pl.col("name").alias("value"))
     .vstack(cat.select("sku", pl.lit("colour").alias("property"), pl.lit("n/a").alias("value")))
     .write_csv(d / "item_properties.csv"))


def _run(d: Path, fmt: str) -> dict:
    (d / f"{fmt}.yaml").write_text(MAPPINGS[fmt])
    code = ("import resource, sys; from jobs import import_events as IE; "
            f"IE.main(['--set', 'mapping={d}/{fmt}.yaml', '--set', 'output={d}/out_{fmt}']); "
            "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{fmt}: import failed\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    peak = int(out.stdout.rsplit("peak_kib", 1)[1].split()[0])
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(peak / 2**20, 2),
            "file_mib": round(sum((d / f).stat().st_size for f in EVENT_FILES.get(fmt, [f"events.{fmt}"])) / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=0, help="the first this many events (0: all)")
    ap.add_argument("--source", default=str(CANONICAL), help="a canonical folder (events.parquet, items.parquet)")
    ap.add_argument("--out", default=str(RESULTS / "import_formats.json"))
    args = ap.parse_args(argv)
    source = Path(args.source)
    if args.rows < 0:
        ap.error("--rows must be >= 0")
    if not (source / "events.parquet").is_file():
        ap.error(f"{source}/events.parquet is missing: run `make data` first")
    events = pl.read_parquet(source / "events.parquet")  # in file order: an order's lines together, in place
    events = events.filter(pl.col("event_type").is_in(["purchase", "return"]))
    events = events.head(args.rows) if args.rows else events
    items = pl.read_parquet(source / "items.parquet")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="import-formats-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        _write(d, events, items)
        print(f"wrote {events.height:,} events in {len(MAPPINGS)} shapes in {time.perf_counter() - t0:.0f} s", flush=True)
        for fmt in MAPPINGS:
            results[fmt] = _run(d, fmt)
        base = {t: pl.read_parquet(d / "out_parquet" / f"{t}.parquet").sort(pl.all()) for t in ("events", "items")}
        for fmt, r in results.items():
            got = {t: pl.read_parquet(d / f"out_{fmt}" / f"{t}.parquet").sort(pl.all()) for t in ("events", "items")}
            r["events"], r["items"] = got["events"].height, got["items"].height
            r["same_as_parquet"] = all(got[t].equals(base[t]) for t in ("events", "items"))
            print(f"{fmt:<8} {r}", flush=True)
    result = {"bench": "import_formats", "commit": git_commit(), "machine": machine(),
              "command": " ".join(["python -m bench.import_formats", *(sys.argv[1:] if argv is None else argv)]),
              "data": {"events": events.height, "items": items.height, "source": str(source),
                       "note": "purchases and returns of the bundled log (the log has no other types)"},
              "formats": results, "this_process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    write_result(Path(args.out), result)
    return 0 if all(r["same_as_parquet"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
