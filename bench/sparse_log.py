"""A synthetic sparse log for timing the jobs at a size the bundled one does not reach.

    python -m bench.sparse_log --shoppers 60000 --items 40000 --out bench/.data/sparse

Shaped like a review-style public log: many items, few purchases per shopper (geometric, mean
about 6), no sessions, one item per event, two years. Items belong to 200 topics whose words make
their titles (so the text encoder has something to read); a shopper buys mostly from one to three
favourite topics, by each item's popularity, and a quarter of the time anything popular.

For timings and scale only: its rankings are no claim about any real shop (the generator decides
what is predictable). Writes <out>/events.parquet and <out>/items.parquet in the canonical schema.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

TOPICS = 200
WORDS = 3000
START = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
DAYS = 760


def cdf(p: np.ndarray) -> np.ndarray:
    c = p.cumsum()
    c /= c[-1]
    return c


def sparse_log(shoppers: int, items: int, seed: int = 7) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(events, items) in the canonical columns; the same arguments give the same tables."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(WORDS)]
    topic_words = [rng.choice(WORDS, 12, replace=False) for _ in range(TOPICS)]
    item_topic = rng.integers(0, TOPICS, items)
    pop = rng.lognormal(0, 1.3, items)
    titles = [" ".join(words[w] for w in rng.choice(topic_words[t], 4, replace=False)) + " "
              + " ".join(rng.choice(words, 2)) for t in item_topic]
    by_topic = [np.flatnonzero(item_topic == t) for t in range(TOPICS)]
    # Each draw by popularity is Generator.choice(..., p=...)'s own arithmetic (the same numbers from
    # the same stream) with the cumulative sums computed once, not once per draw.
    cdf_all = cdf(pop / pop.sum())
    cdf_topic = [cdf(pop[c] / pop[c].sum()) if len(c) else None for c in by_topic]
    n_int = np.minimum(rng.geometric(0.18, shoppers) + 1, 60)
    rows: list[tuple] = []
    for u in range(shoppers):
        fav = rng.choice(TOPICS, rng.integers(1, 4), replace=False)
        ts = np.sort(rng.uniform(0, 700) + rng.exponential(20, n_int[u]).cumsum())
        for k in range(n_int[u]):
            if rng.random() < 0.75:
                t = rng.choice(fav)
                if len(by_topic[t]) == 0:
                    continue
                it = by_topic[t][cdf_topic[t].searchsorted(rng.random(), side="right")]
            else:
                it = cdf_all.searchsorted(rng.random(), side="right")
            rows.append((f"e{len(rows)}", START + dt.timedelta(days=float(ts[k])), f"u{u}", "purchase", f"i{it}"))
    events = pl.DataFrame(rows, schema=["event_id", "ts", "user_id", "event_type", "item_id"], orient="row")
    events = events.filter(pl.col("ts") < START + dt.timedelta(days=DAYS))
    catalog = pl.DataFrame({"item_id": [f"i{i}" for i in range(items)], "title": titles,
                            "category": [f"Dept{t % 12} > Topic{t}" for t in item_topic],
                            "price": np.round(rng.lognormal(3, 1, items), 2)})
    return events, catalog


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shoppers", type=int, default=60_000)
    ap.add_argument("--items", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="bench/.data/sparse")
    a = ap.parse_args(argv)
    if a.shoppers < 1 or a.items < TOPICS:
        ap.error(f"--shoppers must be >= 1 and --items >= {TOPICS}, got {a.shoppers} and {a.items}")
    events, catalog = sparse_log(a.shoppers, a.items, a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    events.write_parquet(out / "events.parquet")
    catalog.write_parquet(out / "items.parquet")
    print(f"{events.height:,} purchases by {events['user_id'].n_unique():,} shoppers of "
          f"{events['item_id'].n_unique():,} of {catalog.height:,} items -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
