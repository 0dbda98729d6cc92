"""Scale the canonical bundled data up for benchmarks: replicate events with shifted ids/timestamps.

Replica r gets user_id/session_id/event_id suffixed with "~r" and timestamps shifted by r*7
minutes: r more shops' worth of shoppers on the same catalog and calendar, so popularity,
co-occurrence and per-user work all grow with the replica count.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from features.data import schema as S


def scale_events(events: pl.DataFrame, replicas: int) -> pl.DataFrame:
    parts = []
    for r in range(replicas):
        sfx = f"~{r}" if r else ""
        parts.append(
            events.with_columns(
                (pl.col(S.EVENT_ID) + sfx),
                (pl.col(S.USER_ID) + sfx),
                (pl.col(S.SESSION_ID) + sfx),
                (pl.col(S.TS) + dt.timedelta(minutes=7 * r)),
            )
        )
    return pl.concat(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default="data/canonical/online_retail/events.parquet")
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--files", type=int, default=8, help="output files (Ray reads them in parallel)")
    ap.add_argument("--out", default="bench/.data/events_x10")
    a = ap.parse_args()
    ev = scale_events(pl.read_parquet(a.events), a.replicas)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n = ev.height
    step = -(-n // a.files)
    for i in range(a.files):
        pq.write_table(ev.slice(i * step, step).to_arrow().cast(S.EVENTS_SCHEMA), out / f"part-{i:03d}.parquet")
    print(f"{n:,} events in {a.files} files -> {out}")


if __name__ == "__main__":
    main()
