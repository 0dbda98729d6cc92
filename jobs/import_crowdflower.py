"""Import the Crowdflower search-relevance judgments for `jobs.evaluate` (search relevance).

    python -m jobs.import_crowdflower [--set input=../shared/data/crowdflower_search/train.csv] [--set output=...]

Writes <output>/items.parquet (canonical item columns) and judgments.parquet (query, item_id,
grade). The data's licence keeps it out of the repository: the default output is under
data/canonical/, which git ignores. A missing input is a clear error (`make evaluate-search`
skips instead).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features.data import schema as S
from features.data.crowdflower import import_crowdflower
from jobs.common import load_job_config, parse_args, run_job


@dataclass(frozen=True)
class ImportCrowdflowerConfig:
    input: str = "../shared/data/crowdflower_search/train.csv"
    output: str = "data/canonical/crowdflower_search"


def run(cfg: ImportCrowdflowerConfig) -> dict:
    if not Path(cfg.input).is_file():
        raise FileNotFoundError(f"input {cfg.input}: no such file (the Crowdflower judgments are not bundled)")
    raw = pl.read_csv(cfg.input, infer_schema_length=0)  # all strings: nothing is lost to type guessing
    raw = raw.with_columns(pl.col("median_relevance").cast(pl.Float64, strict=False))
    items, judgments = import_crowdflower(raw)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table({f.name: items[f.name].to_arrow() if f.name in items.columns else pa.nulls(items.height, f.type)
                      for f in S.ITEMS_SCHEMA}).cast(S.ITEMS_SCHEMA)
    pq.write_table(table, out / "items.parquet")
    pq.write_table(judgments.to_arrow(), out / "judgments.parquet")
    return {"rows": raw.height, "items": items.height, "judgments": judgments.height,
            "queries": judgments["query"].n_unique(), "output": str(out)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Import the Crowdflower search relevance judgments", "import_crowdflower.yaml", argv)

    def body() -> int:
        r = run(load_job_config(ImportCrowdflowerConfig, args))
        print(f"crowdflower: {r['rows']:,} rows -> {r['items']:,} items, {r['judgments']:,} judgments, "
              f"{r['queries']} queries -> {r['output']}")
        return 0

    return run_job("import_crowdflower", body)


if __name__ == "__main__":
    sys.exit(main())
