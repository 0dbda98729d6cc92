"""What a day of catalog writes does to search: retrieval time after many item upserts and removals.

    python -m bench.catalog_churn [--items 100000] [--changes 20000] [--queries 300] [--index auto]
                                  [--out bench/results/catalog_churn.json]

A shop keeps serving's catalog current through `PUT /v1/items` and `DELETE /v1/items` between
batch runs: mostly price and stock changes (the text, and so the vector, stays), some edited
titles, some discontinued products. The FAISS index is never rebuilt online, so every one of
these writes is something each search must account for. This bench builds a synthetic catalog of
`--items` items (random unit vectors of MiniLM's width, titles of 4-8 words from a 2,000-word
vocabulary; the index kind serving picks for that size), then times `LiveCatalog.search_pool`
(the dense top-200 and BM25F top-200 a search ranks) for the same `--queries` random queries in
five states, each after the one before:

  fresh                 nothing written since the batch (the baseline of every ratio)
  price_changes         `--changes` upserts that change price and stock only
  title_changes         `--changes` / 10 upserts with a new title (a new vector)
  removals              `--changes` / 10 removals
  all_of_it             the three above, plus per-request exclusions of 50 items (a buyer's purchases)

and records p50 / p99 per state, the write rates, how long a replica starting afterwards takes to
replay the item log (the writes compacted as serving compacts them), the ratio to fresh, and whether each state's dense results are
still the exact top-200 of the live catalog (recall against a brute-force scan of the live
vectors; HNSW is approximate even when fresh, so its fresh recall is the reference). Item vectors
lie around 500 topic centres and each query near one item, as text embeddings do.
Synthetic data: timing only, not relevance.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from bench.feature_job import RESULTS, machine, write_result
from features.artifacts import git_commit
from features.retrieval.catalog import Catalog, ItemUpdate
from features.retrieval.index import IndexConfig, ItemIndex
from features.retrieval.live import LiveCatalog, RetrievalConfig

DIM = 384
POOL = 200


@functools.cache
def _centres(topics: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((topics, DIM)).astype(np.float32)


def clustered(rng: np.random.Generator, n: int, topics: int = 500) -> np.ndarray:
    """Unit vectors around `topics` centres, as text embeddings cluster by product kind (uniform
    random vectors would be the worst case of every ANN index, not a shop's)."""
    centres = _centres(topics)
    v = centres[rng.integers(topics, size=n)] + 0.8 * rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _catalog(n: int, rng: np.random.Generator, kind: str = "auto") -> tuple[Callable[[], Catalog], ItemIndex,
                                                                             list[str], np.ndarray]:
    """(a maker of the batch catalog, a new copy per call; its index; titles; vocabulary)."""
    vocab = np.array([f"w{i}" for i in range(2000)])
    titles = [" ".join(rng.choice(vocab, int(rng.integers(4, 9)))) for _ in range(n)]
    ids = [f"it-{i:07d}" for i in range(n)]
    vec = clustered(rng, n)
    items = pl.DataFrame({"item_id": ids, "title": titles, "item_text": titles, "price": rng.uniform(1, 50, n)})
    t0 = time.perf_counter()
    index = ItemIndex.build(ids, vec, IndexConfig(kind=kind))
    print(f"index: {index.kind} over {n:,} items in {time.perf_counter() - t0:.1f} s", flush=True)
    return (lambda: Catalog(ids, vec.copy(), items, {})), index, titles, vocab


def _time(live: LiveCatalog, queries: list[str], qvecs: np.ndarray, exclude: frozenset[str]) -> dict:
    times, recall = [], []
    vectors = live.catalog.vectors
    gone = live.excluded(exclude)
    for text, q in zip(queries, qvecs):
        t0 = time.perf_counter()
        live.search_pool(text, q, None, exclude)
        times.append(time.perf_counter() - t0)
        _, got = live.ann(q, POOL, None, gone)
        s = vectors @ q
        s[gone] = -np.inf
        truth = np.argpartition(-s, POOL)[:POOL]
        recall.append(len(np.intersect1d(got, truth)) / POOL)
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "dense_recall@200": round(float(np.mean(recall)), 4), "upserted": live.n_changed,
            "removed": live.n_removed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--changes", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--index", choices=("auto", "flat", "ivf", "hnsw"), default="auto", help="auto: serving's choice")
    ap.add_argument("--out", default=str(RESULTS / "catalog_churn.json"))
    args = ap.parse_args(argv)
    if args.items < 1000 or not 10 <= args.changes <= args.items // 2 or args.queries < 10:
        ap.error("--items >= 1000, 10 <= --changes <= items / 2, --queries >= 10")
    rng = np.random.default_rng(0)
    batch, index, titles, vocab = _catalog(args.items, rng, args.index)
    cat = batch()
    log_dir = Path(tempfile.mkdtemp(prefix="churn-items-"))
    # The item log on disk, as serving keeps it (not fsynced here: serving fsyncs every write).
    live = LiveCatalog(cat, index, log_dir, RetrievalConfig(num_candidates=POOL), fsync=False)
    queries = [" ".join(rng.choice(vocab, 2)) for _ in range(args.queries)]
    qvecs = cat.vectors[rng.integers(args.items, size=args.queries)] + 0.05 * rng.standard_normal((args.queries, DIM))
    qvecs = (qvecs / np.linalg.norm(qvecs, axis=1, keepdims=True)).astype(np.float32)  # near an item, as a query is
    # Warm the code paths once, then measure.
    _time(live, queries[:10], qvecs[:10], frozenset())
    states: dict[str, dict] = {}
    states["fresh"] = _time(live, queries, qvecs, frozenset())
    print(f"fresh: {states['fresh']}", flush=True)
    picks = rng.choice(args.items, args.changes + args.changes // 5, replace=False)
    price, title, gone = (picks[: args.changes], picks[args.changes: args.changes + args.changes // 10],
                          picks[args.changes + args.changes // 10:])

    def put(r: int, new_title: str | None = None) -> None:
        t = new_title or titles[r]
        v = cat.vectors[r] if new_title is None else clustered(rng, 1)[0]  # (the encoder's, as serving's PUT)
        live.upsert(ItemUpdate(item_id=cat.item_ids[r], title=t, price=float(rng.uniform(1, 50)),
                               in_stock=bool(rng.random() < 0.9)), v)

    t0 = time.perf_counter()
    for r in price:
        put(int(r))
    write_s = {"price_changes": time.perf_counter() - t0}
    states["price_changes"] = _time(live, queries, qvecs, frozenset())
    t0 = time.perf_counter()
    for r in title:
        put(int(r), " ".join(rng.choice(vocab, 6)))
    write_s["title_changes"] = time.perf_counter() - t0
    states["title_changes"] = _time(live, queries, qvecs, frozenset())
    t0 = time.perf_counter()
    for r in gone:
        live.remove(cat.item_ids[int(r)])
    write_s["removals"] = time.perf_counter() - t0
    states["removals"] = _time(live, queries, qvecs, frozenset())
    bought = frozenset(cat.item_ids[int(r)] for r in rng.choice(args.items, 50, replace=False))
    states["all_of_it"] = _time(live, queries, qvecs, bought)
    # A replica that starts now (a replacement, a new artifacts version) replays the log.
    t0 = time.perf_counter()
    LiveCatalog(batch(), index, None, RetrievalConfig(num_candidates=POOL))
    t1 = time.perf_counter()
    again = LiveCatalog(batch(), index, log_dir, RetrievalConfig(num_candidates=POOL), fsync=False)
    start = {"without_log_s": round(t1 - t0, 2), "with_log_s": round(time.perf_counter() - t1, 2),
             "log_records": again.log_records}
    assert (again.n_upserted, again.n_removed) == (live.n_upserted, live.n_removed)
    shutil.rmtree(log_dir, ignore_errors=True)
    print(f"replica start: {start}", flush=True)
    base = states["fresh"]["p50_ms"]
    for name, st in states.items():
        st["p50_vs_fresh"] = round(st["p50_ms"] / base, 2)
        print(f"{name:<14} p50 {st['p50_ms']:7.2f} ms  p99 {st['p99_ms']:7.2f} ms  x{st['p50_vs_fresh']:.2f}  "
              f"recall {st['dense_recall@200']:.3f}", flush=True)
    result = {"bench": "catalog_churn", "commit": git_commit(), "machine": machine(),
              "command": " ".join(["python -m bench.catalog_churn", *(sys.argv[1:] if argv is None else argv)]),
              "data": {"items": args.items, "index": index.kind, "price_changes": len(price),
                       "title_changes": len(title), "removals": len(gone), "queries": args.queries,
                       "synthetic": "timing only, see bench/catalog_churn.py"},
              "writes_per_s": {k: round(n / v, 1) for (k, v), n in zip(write_s.items(), (len(price), len(title),
                                                                                         len(gone)))},
              "replica_start": start, "states": states}
    write_result(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("data", "writes_per_s", "replica_start")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
