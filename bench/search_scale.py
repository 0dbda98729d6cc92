"""How long `jobs.evaluate` takes on a large shop's search judgments, and how much memory.

    python -m bench.search_scale [--items 54667] [--queries 11795] [--per-query 6]
                                 [--out bench/results/search_scale.json] [--keep DIR]

The bundled judgments (Crowdflower, 261 queries over 9,912 items) say nothing about a shop with
tens of thousands of items and of judged queries. This bench writes a synthetic judgment set of
that size in the canonical layout, then runs the evaluation on it exactly as a user would
(`python -m jobs.evaluate --set events=null --set items=... --set judgments=...`, a child process),
and records the wall time of each step, the peak memory of the job, the commit, and the run's own
results. The data are for timing only: titles are 4-10 words drawn by frequency from the words of
the Crowdflower titles and descriptions (or, without ../shared, of the bundled Online Retail
titles), 60% of items get a 20-80 word description, each query is 1-3 words of one item's title
(that item graded 3), and up to `--per-query` - 1 items sharing its first word get a grade drawn
from the averaged grades 1, 1.33, ..., 3, so grades are fractional as in real rater averages.
Nothing is tuned on these numbers; they are not relevance results.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench.feature_job import RESULTS, machine, write_result
from features.artifacts import git_commit

ROOT = Path(__file__).resolve().parents[1]
CROWDFLOWER_ITEMS = ROOT / "data" / "canonical" / "crowdflower_search" / "items.parquet"
ONLINE_RETAIL_ITEMS = ROOT / "data" / "canonical" / "online_retail" / "items.parquet"
GRADES = np.round(np.array([1, 4 / 3, 5 / 3, 2, 7 / 3, 8 / 3, 3]), 4)


def vocabulary() -> tuple[np.ndarray, np.ndarray, str]:
    """Words and their frequencies from the Crowdflower items if imported, else the bundled titles."""
    src = CROWDFLOWER_ITEMS if CROWDFLOWER_ITEMS.is_file() else ONLINE_RETAIL_ITEMS
    items = pl.read_parquet(src)
    texts = items["title"].to_list() + [d or "" for d in items.get_column("description").to_list()]
    words = collections.Counter(w for t in texts for w in (t or "").lower().split() if w.isalpha())
    vocab = np.array(sorted(words))
    p = np.array([words[w] for w in vocab], np.float64)
    return vocab, p / p.sum(), str(src.relative_to(ROOT))


def synthetic(n_items: int, n_queries: int, per_query: int, vocab: np.ndarray, p: np.ndarray,
              seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(items, judgments) drawn from words `vocab` with frequencies `p`: see the module docstring."""
    if n_items < 10 or n_queries < 10 or per_query < 1:
        raise ValueError(f"--items and --queries must be >= 10 and --per-query >= 1, got {n_items}, {n_queries}, {per_query}")
    rng = np.random.default_rng(seed)
    titles = [" ".join(rng.choice(vocab, int(rng.integers(4, 11)), p=p)) for _ in range(n_items)]
    descs = [None if rng.random() < 0.4 else " ".join(rng.choice(vocab, int(rng.integers(20, 81)), p=p))
             for _ in range(n_items)]
    ids = [f"sx-{i:07d}" for i in range(n_items)]
    by_word: dict[str, list[int]] = collections.defaultdict(list)
    for i, t in enumerate(titles):
        for w in set(t.split()):
            by_word[w].append(i)
    rows = []
    for _ in range(n_queries):
        i = int(rng.integers(n_items))
        words = titles[i].split()
        query = " ".join(rng.choice(words, min(len(words), int(rng.integers(1, 4))), replace=False))
        rows.append((query, ids[i], 3.0))
        same = by_word[query.split()[0]]
        for j in rng.choice(same, min(len(same), per_query - 1), replace=False):
            if j != i:
                rows.append((query, ids[int(j)], float(rng.choice(GRADES))))
    items = pl.DataFrame({"item_id": ids, "title": titles, "description": descs})
    judgments = pl.DataFrame(rows, schema=["query", "item_id", "grade"], orient="row").unique(
        ["query", "item_id"], keep="first", maintain_order=True)
    return items, judgments


STEP = re.compile(r"^\[evaluate \d+\] (.*) \(t=")
DONE = re.compile(r"^\s+done in ([\d.]+)s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=54_667)
    ap.add_argument("--queries", type=int, default=11_795, help="queries drawn (repeats merge, so fewer are distinct)")
    ap.add_argument("--per-query", type=int, default=6, help="judgments per query at most")
    ap.add_argument("--out", default=str(RESULTS / "search_scale.json"))
    ap.add_argument("--keep", help="write the data and the run here (default: a temporary folder)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                    help="passed on to jobs.evaluate (e.g. search.max_queries=1000)")
    ns = ap.parse_args(argv)
    work = Path(ns.keep or tempfile.mkdtemp(prefix="search-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    vocab, p, source = vocabulary()
    items, judgments = synthetic(ns.items, ns.queries, ns.per_query, vocab, p)
    items.write_parquet(work / "items.parquet")
    judgments.write_parquet(work / "judgments.parquet")
    print(f"{items.height:,} items, {judgments['query'].n_unique():,} queries, {judgments.height:,} judgments "
          f"(words from {source}) in {work}", flush=True)
    cmd = [sys.executable, "-m", "jobs.evaluate", "--set", "events=null", "--set", f"items={work / 'items.parquet'}",
           "--set", f"judgments={work / 'judgments.parquet'}", "--set", f"output_root={work / 'runs'}",
           *[a for o in ns.overrides for a in ("--set", o)]]
    t0 = time.perf_counter()
    steps, step, log = {}, None, []
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # type: ignore[union-attr]
            print(line, end="", flush=True)
            if (m := STEP.match(line)):
                step = m.group(1)
            elif (m := DONE.match(line)) and step:
                steps[step] = float(m.group(1))
            elif line.startswith("  fold "):
                log.append(line.strip())
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(f"jobs.evaluate failed (exit {proc.returncode})", file=sys.stderr)
        return proc.returncode
    runs = sorted((work / "runs").iterdir())
    metrics = json.loads((runs[-1] / "metrics.json").read_text())["search"]
    result = {
        "bench": "search_scale", "commit": git_commit(), "machine": machine(), "command": " ".join(cmd[1:]),
        "data": {"items": items.height, "queries": metrics["queries"], "judgments": judgments.height,
                 "words_from": source, "synthetic": "timing only, see bench/search_scale.py"},
        "wall_s": round(wall, 1),
        # the largest resident set among the job's ended and reaped processes: at least its driver
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
        "steps_s": steps, "folds": log, "dev_mode": metrics.get("dev_mode"),
        "full_catalog_ndcg@10": {m["method"]: m["ndcg@10"] for m in metrics["full_catalog"]},
    }
    write_result(ns.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
