"""Import the UCI Online Retail log into the canonical events/items tables.

    python -m jobs.import_online_retail [--set input=data/online_retail.parquet] [--set output=...]

Reads either UCI layout (Online Retail, Online Retail II) as Parquet or CSV.

Writes <output>/events.parquet, items.parquet and rejected.parquet (non-merchandise and
stock-adjustment lines, with a reason) and prints counts. The mapping is in
features/data/online_retail.py. 540k rows fit one process; no Ray needed here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import polars as pl

from features.data import schema as S
from features.data.online_retail import import_online_retail
from features.data.reading import read_table
from jobs.common import load_job_config, parse_args, run_job, write_table


@dataclass(frozen=True)
class ImportConfig:
    input: str = "data/online_retail.parquet"
    output: str = "data/canonical/online_retail"


def run(cfg: ImportConfig) -> dict:
    raw = pl.from_arrow(read_table(cfg.input))  # Parquet, CSV or TSV; either UCI layout
    assert isinstance(raw, pl.DataFrame)
    events, items, rejected = import_online_retail(raw)
    for name, df, schema in (("events", events, S.EVENTS_SCHEMA), ("items", items, S.ITEMS_SCHEMA), ("rejected", rejected, None)):
        write_table(cfg.output, name, df, schema)
    reasons = rejected.group_by(S.REASON).len().sort("len", descending=True)
    return {
        "raw_rows": raw.height,
        "events": events.height,
        "items": items.height,
        "rejected": {r: int(n) for r, n in reasons.iter_rows()},
        "users": events.get_column(S.USER_ID).n_unique(),
        "output": cfg.output,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Import the UCI Online Retail log", "import_online_retail.yaml", argv)

    def body() -> int:
        cfg = load_job_config(ImportConfig, args)
        r = run(cfg)
        print(f"online retail: {r['raw_rows']:,} raw lines -> {r['events']:,} events, {r['items']:,} items, "
              f"{r['users']:,} users -> {r['output']}")
        for reason, n in r["rejected"].items():
            print(f"  rejected {reason:<20} {n:>8,}  (in rejected.parquet)")
        assert r["events"] + sum(r["rejected"].values()) == r["raw_rows"], "row accounting broken"
        return 0

    return run_job("import_online_retail", body)


if __name__ == "__main__":
    sys.exit(main())
