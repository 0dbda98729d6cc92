"""The importer on a large event export: streamed in chunks against the whole file at once.

    python -m bench.import_scale [--rows 5000000] [--out bench/results/import_scale.json]

Builds a Kaggle-style event export (`event_time, event_type, product_id, category_code, brand,
price, user_id, user_session`; no items file, so the catalog comes from the events) of about
`--rows` lines from the bundled Online Retail log: each purchased line becomes a view, a cart and
a purchase, the whole repeated until the size is reached, every copy a year later than the one
before. The file's contents are synthetic in shape and real in values, for timing only. Then runs
`python -m jobs.import_events` on it twice in fresh processes, as a user would: with the default
`chunk_rows` (streamed) and with `chunk_rows` above the file's rows (the whole file as one table,
which is how the importer read every file before it streamed). Reported: wall seconds and the
process's peak resident memory of each, their ratios, and whether both wrote the same events and
items. Writes bench/results/import_scale.json with the commit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from bench.feature_job import RESULTS, machine, write_result
from features.artifacts import git_commit
from features.data import schema as S

ROOT = Path(__file__).resolve().parents[1]
MAPPING = """events:
  path: events.csv
  columns: {ts: event_time, event_type: event_type, item_id: product_id, user_id: user_id, session_id: user_session,
            price: price}
  values: {event_type: {cart: add_to_cart}}
items:
  columns: {item_id: product_id, title: [brand, category_code], category: category_code, brand: brand, price: price}
  category_separator: "."
"""
# Runs the job in this (fresh) process and prints its peak resident memory last.
RUN = ("import resource, sys; from jobs import import_events as IE; rc = IE.main(sys.argv[1:]); "
       "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def make_export(folder: Path, rows: int) -> Path:
    ev = pl.read_parquet(ROOT / "data/canonical/online_retail/events.parquet").filter(
        (pl.col(S.EVENT_TYPE) == "purchase") & pl.col(S.USER_ID).is_not_null())
    it = pl.read_parquet(ROOT / "data/canonical/online_retail/items.parquet").select(
        S.ITEM_ID, ("home." + pl.col(S.TITLE).str.split(" ").list.first().str.to_lowercase()).alias("category_code"))
    base = ev.join(it, on=S.ITEM_ID, how="left").select(
        pl.col(S.TS), pl.col(S.ITEM_ID).alias("product_id"), "category_code", pl.lit("").alias("brand"),
        pl.col(S.PRICE).alias("price"), pl.col(S.USER_ID).alias("user_id"), pl.col(S.SESSION_ID).alias("user_session"))
    one = pl.concat([base.with_columns((pl.col(S.TS) - pl.duration(minutes=m)).alias(S.TS), pl.lit(t).alias("event_type"))
                     for m, t in ((10, "view"), (5, "cart"), (0, "purchase"))]).sort(S.TS)
    copies = max(1, -(-rows // one.height))
    path = folder / "events.csv"
    with open(path, "wb") as f:
        for c in range(copies):
            part = one.with_columns((pl.col(S.TS) + pl.duration(days=366 * c)).dt.strftime("%Y-%m-%d %H:%M:%S UTC")
                                    .alias("event_time"))
            part.select("event_time", "event_type", "product_id", "category_code", "brand", "price", "user_id",
                        "user_session").write_csv(f, include_header=c == 0)
    (folder / "mapping.yaml").write_text(MAPPING)
    return path


def run_import(folder: Path, out: Path, chunk_rows: int) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", RUN, "--set", f"mapping={folder / 'mapping.yaml'}", "--set", f"output={out}",
                        "--set", f"chunk_rows={chunk_rows}"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"import failed ({p.returncode}): {p.stderr[-2000:]}{p.stdout[-2000:]}")
    peak_kb = int(next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("PEAK_KB")))
    summary = next(line for line in p.stdout.splitlines() if line.startswith("import:"))
    return {"chunk_rows": chunk_rows, "wall_s": round(wall, 1), "peak_gib": round(peak_kb / 2**20, 2), "summary": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--out", default=str(RESULTS / "import_scale.json"))
    ns = ap.parse_args(argv)
    from jobs.import_events import ImportEventsConfig

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = make_export(folder, ns.rows)
        lines = sum(1 for _ in open(path, "rb")) - 1
        print(f"export: {lines:,} lines, {path.stat().st_size / 2**20:,.0f} MiB", flush=True)
        streamed = run_import(folder, folder / "streamed", ImportEventsConfig().chunk_rows)
        print(f"streamed: {json.dumps(streamed)}", flush=True)
        whole = run_import(folder, folder / "whole", lines + 1)
        print(f"whole file: {json.dumps(whole)}", flush=True)
        same = all(pl.read_parquet(folder / "streamed" / f"{n}.parquet").equals(pl.read_parquet(folder / "whole" / f"{n}.parquet"))
                   for n in ("events", "items"))
        result = {"bench": "import_scale", "commit": git_commit(), "machine": machine(), "lines": lines,
                  "file_mib": round(path.stat().st_size / 2**20, 1), "streamed": streamed, "whole_file": whole,
                  "peak_memory_ratio": round(whole["peak_gib"] / streamed["peak_gib"], 2),
                  "wall_ratio": round(whole["wall_s"] / streamed["wall_s"], 2), "same_events_and_items": same}
    print(f"peak memory: streamed {streamed['peak_gib']} GiB, whole file {whole['peak_gib']} GiB "
          f"({result['peak_memory_ratio']}x); wall {streamed['wall_s']} s vs {whole['wall_s']} s; same output: {same}")
    write_result(ns.out, result)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
