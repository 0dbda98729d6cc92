"""What skipping rows does to an approximate search: recall and time when many items are left out.

    python -m bench.skip_recall [--items 100000] [--queries 200] [--k 200] [--kinds hnsw,ivf]
                                [--out bench/results/skip_recall.json]

Serving's FAISS search never returns a removed item, an item whose text (so vector) changed since
the index was built, or a buyer's purchases: it skips their rows inside FAISS (an ID selector).
HNSW and IVF then find fewer of the rows they may return, the more so the larger the share
skipped: a shop that removes most of a seasonal catalog between batch runs would see it. The
search widens HNSW's candidate list and IVF's probed lists by the share skipped, and scans the
rows left exactly when few are (features/retrieval/index.py's MAX_WIDEN and EXACT_LIVE_ROWS).

For each index kind, on `--items` unit vectors around 500 topic centres (bench/catalog_churn.py's
synthetic catalog; each query near one item) and a random share of rows skipped, it measures the
dense top-`--k`'s recall against a brute-force scan of the rows not skipped, how many rows come
back, and p50 / p99 time, twice in the same run: as the search is now ("widened") and with the
widening and the exact scan switched off ("fixed": the search before). Synthetic data: recall of
the index, not relevance.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bench.catalog_churn import clustered
from bench.feature_job import RESULTS, machine, write_result
from features.artifacts import git_commit
from features.retrieval import index as IX

SHARES = (0.0, 0.1, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99)


def _measure(ix: IX.ItemIndex, vecs: np.ndarray, queries: np.ndarray, skip: np.ndarray, k: int) -> dict:
    keep = np.ones(len(vecs), bool)
    keep[skip] = False
    live = np.flatnonzero(keep)
    recalls, returned, times = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        _, rows = ix.search_rows(q, k, skip if len(skip) else None)
        times.append(time.perf_counter() - t0)
        s = vecs[live] @ q
        truth = live[np.argsort(-s, kind="stable")[:k]]
        recalls.append(len(np.intersect1d(rows, truth)) / len(truth))
        returned.append(len(rows))
    return {"recall": round(float(np.mean(recalls)), 4), "recall_min": round(float(np.min(recalls)), 4),
            "returned_mean": round(float(np.mean(returned)), 1), "returned_min": int(np.min(returned)),
            "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3)}


def run(items: int, n_queries: int, k: int, kinds: list[str], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vecs = clustered(rng, items)
    picks = vecs[rng.choice(items, n_queries, replace=False)]
    queries = picks + 0.3 * clustered(rng, n_queries)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    out: dict = {}
    for kind in kinds:
        t0 = time.perf_counter()
        ix = IX.ItemIndex.build([f"i{j}" for j in range(items)], vecs, IX.IndexConfig(kind=kind))  # type: ignore[arg-type]
        build_s = time.perf_counter() - t0
        rows = []
        for share in SHARES:
            skip = np.sort(rng.choice(items, int(share * items), replace=False)).astype(np.int64)
            row = {"skipped_share": share, "skipped": len(skip)}
            for mode, widen, exact in (("fixed", 1, 0), ("widened", IX.MAX_WIDEN, IX.EXACT_LIVE_ROWS)):
                saved = IX.MAX_WIDEN, IX.EXACT_LIVE_ROWS
                IX.MAX_WIDEN, IX.EXACT_LIVE_ROWS = widen, exact
                try:
                    row[mode] = _measure(ix, vecs, queries, skip, k)
                finally:
                    IX.MAX_WIDEN, IX.EXACT_LIVE_ROWS = saved
            print(f"{kind} skip {share:4.0%}: recall {row['fixed']['recall']:.3f} -> {row['widened']['recall']:.3f}, "
                  f"returned {row['fixed']['returned_mean']:.0f} -> {row['widened']['returned_mean']:.0f}, p50 "
                  f"{row['fixed']['p50_ms']:.2f} -> {row['widened']['p50_ms']:.2f} ms", flush=True)
            rows.append(row)
        out[kind] = {"build_s": round(build_s, 1), "params": ix.params, "rows": rows}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=200, help="the dense top-k a search ranks (retriever.num_candidates)")
    ap.add_argument("--kinds", default="hnsw,ivf")
    ap.add_argument("--out", default=str(RESULTS / "skip_recall.json"))
    a = ap.parse_args(argv)
    kinds = [k for k in a.kinds.split(",") if k]
    bad = [k for k in kinds if k not in ("flat", "ivf", "hnsw")]
    if bad or a.items < 1000 or a.queries < 1 or a.k < 1:
        ap.error(f"--kinds from flat, ivf, hnsw (got {bad}); --items >= 1000, --queries and --k >= 1")
    result = {"benchmark": "skip_recall", "commit": git_commit(), "machine": machine(), "items": a.items,
              "queries": a.queries, "k": a.k, "max_widen": IX.MAX_WIDEN, "exact_live_rows": IX.EXACT_LIVE_ROWS,
              "kinds": run(a.items, a.queries, a.k, kinds)}
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
