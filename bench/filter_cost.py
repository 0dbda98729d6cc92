"""What a filter (category, price, in stock) costs a search, against the same search unfiltered,
measured on serving's own code in the same run.

    python -m bench.filter_cost [--artifacts artifacts] [--queries 300] [--repeats 3]

Loads the newest features + index versions (what `make serve` loads). A filtered search scores
the items that pass exactly (features/retrieval/live.py) instead of asking FAISS, and the
category filter matches every item's path, so its cost grows with the catalog, not with k. Each
query (the first two words of a random item's title, with the vector of a random catalog item) runs through
LiveCatalog.search -> rank_candidates (the hand weights, reasons for the top 10) once without a
filter and once with each filter, alternating request by request so drift hits all alike:

- in stock (nearly every item passes),
- price at most the catalog's median (about half pass),
- the most common top-level category (a share of the catalog),
- the most common full category path (a few items).

Reports p50/p99 of each and the ratio of each filter's p50 to the unfiltered p50. Writes
bench/results/filter_cost.json (or --out) with the commit.
"""

from __future__ import annotations

import argparse
import collections
import platform
import time

import numpy as np

from bench.feature_job import write_result
from features import artifacts as A
from features.data.text import title_query
from features.retrieval.catalog import load_catalog
from features.retrieval.live import Filters, LiveCatalog, RetrievalConfig
from features.retrieval.ranking import HandWeights, RankContext, rank_candidates
from jobs.common import one_blas_thread


def filters_for(catalog) -> dict[str, Filters | None]:
    """The unfiltered baseline and one filter of each kind, chosen from this catalog."""
    paths = collections.Counter(c for c in catalog.category if c)
    tops = collections.Counter(c.split(">")[0].strip() for c in catalog.category if c)
    prices = catalog.price[~np.isnan(catalog.price)]
    out: dict[str, Filters | None] = {"no filter": None, "in stock": Filters(in_stock=True)}
    if len(prices):
        out["price at most the median"] = Filters(price_max=float(np.median(prices)))
    if tops:
        out[f"top-level category {tops.most_common(1)[0][0]!r}"] = Filters(category=tops.most_common(1)[0][0])
    if paths:
        out[f"category path {paths.most_common(1)[0][0]!r}"] = Filters(category=paths.most_common(1)[0][0])
    return out


def measure(live: LiveCatalog, settings: dict[str, Filters | None], qs: list[str], vec_rows: np.ndarray,
            repeats: int, lat: dict[str, list[float]]) -> None:
    hand = HandWeights()
    for rep in range(repeats + 1):  # the first pass warms caches and is not counted
        for q, r in zip(qs, vec_rows):
            v = live.catalog.vectors[r]
            for name, f in settings.items():
                t0 = time.perf_counter()
                ids, _, bm = live.search(q, v, f)
                rank_candidates(RankContext(mode="search", query=q, query_emb=v), ids, live.catalog, hand, 10, bm)
                if rep:
                    lat[name].append((time.perf_counter() - t0) * 1e3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/filter_cost.json")
    ns = ap.parse_args(argv)
    index_dir = A.latest_complete(ns.artifacts, "index")
    if index_dir is None:
        raise SystemExit(f"no index under {ns.artifacts}/index: run make demo (or make features index) first")
    features_dir = (A.read_manifest(index_dir).get("inputs", {}).get("features") or {}).get("path") or \
        A.latest_complete(ns.artifacts, "features")
    catalog, index = load_catalog(features_dir, index_dir)
    live = LiveCatalog(catalog, index, None, RetrievalConfig())
    settings = filters_for(catalog)
    passing = {name: len(catalog) if f is None else len(live.allowed(f)) for name, f in settings.items()}
    rng = np.random.default_rng(0)
    qs = [title_query(catalog.title[r]) for r in rng.integers(0, len(catalog), ns.queries)]
    vec_rows = rng.integers(0, len(catalog), len(qs))
    lat: dict[str, list[float]] = {name: [] for name in settings}
    with one_blas_thread():  # as in a serving replica (Ray sets one thread per CPU it gives)
        measure(live, settings, qs, vec_rows, ns.repeats, lat)
    base = float(np.percentile(lat["no filter"], 50))
    rows = {name: {"p50_ms": round(float(np.percentile(x, 50)), 3), "p99_ms": round(float(np.percentile(x, 99)), 3),
                   "items_passing": passing[name], "p50_ratio_to_unfiltered": round(float(np.percentile(x, 50)) / base, 3),
                   "requests": len(x)} for name, x in lat.items()}
    out = {"commit": A.git_commit(), "command": "python -m bench.filter_cost", "machine": platform.platform(),
           "index": index_dir, "items": len(catalog), "queries": len(qs), "repeats": ns.repeats, "settings": rows}
    write_result(ns.out, out)
    for name, r in rows.items():
        print(f"{name:<48} {r['items_passing']:>9,} items  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
              f"x{r['p50_ratio_to_unfiltered']:.2f} of unfiltered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
