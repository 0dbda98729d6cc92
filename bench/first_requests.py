"""Benchmark: the first requests a freshly started replica answers, with and without its warm-up.

    python -m bench.first_requests [--artifacts artifacts] [--repeats 3]

A replica that starts (a deploy, or a replacement after a fault under load) pays for first calls:
ONNX Runtime's first run allocates, the behaviour model's first forward pass and the learned
ranker's first explanation build their state. `RetrieverCore` and the query encoder answer a
throw-away search and recommendations when they start (serving/retriever.py `warm_up`). This
starts a fresh Python process per repeat and variant, builds the query encoder and the
RetrieverCore on the newest artifacts exactly as an Ingress replica does, once as shipped and once
with the warm-ups switched off, and times each process's first three searches (distinct queries)
and first three recommendations for shoppers with a history (the feature job's users). ms per
request, the median over the repeats.

Writes bench/results/first_requests.json with the commit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import numpy as np

from bench.feature_job import RESULTS, machine, write_result
from features.artifacts import git_commit

N_FIRST = 3


def child(artifacts: str, warm: bool) -> dict:
    """In a fresh process: build as a replica does, then time the first requests."""
    import time
    from pathlib import Path

    import polars as pl

    from features import artifacts as A
    from features.data import schema as S
    from features.profiles.seed import seed_profiles, seeded_with
    from features.retrieval.ranking import context_for
    from serving import encoder as ENC
    from serving import retriever as RET
    from serving.app import load_serve_config
    from serving.settings import ServingConfig, resolve

    if not warm:  # the comparison: the replica as it started before the warm-ups
        RET.RetrieverCore.warm_up = lambda self: None
        ENC.warm_up_encoder = lambda encoder: None
    state = Path(tempfile.mkdtemp(prefix="bench-first-"))
    cfg = ServingConfig.from_args(load_serve_config(overrides=[f"artifacts_root={artifacts}", f"state_dir={state}",
                                                               "encoder.cache_size=0"])["args"])
    res = resolve(cfg)
    t0 = time.perf_counter()
    enc = ENC.InlineQueryEncoder(cfg, res)
    core = RET.RetrieverCore(cfg, res)
    start_s = time.perf_counter() - t0
    p = cfg.profiles.params
    users = pl.read_parquet(A.join(res.features_dir, "users")).filter(pl.col(S.RECENT_ITEMS).list.len() >= 3).head(N_FIRST)
    shoppers = seed_profiles(users, core.live.catalog.lookup, p, seeded_with(res.features_dir))
    search, recommend = [], []
    for q in ("regency cakestand", "lunch bag red", "paper chain kit")[:N_FIRST]:
        t = time.perf_counter()
        core.search(context_for("search", None, time.time(), p, q, enc.encoder.encode([q], "query")[0]),
                    None, frozenset(), 10)
        search.append((time.perf_counter() - t) * 1e3)
    for prof in shoppers:
        t = time.perf_counter()
        ctx = context_for("recommend", prof, time.time(), p)
        core.recommend(ctx, None, ctx.purchased, 10)
        recommend.append((time.perf_counter() - t) * 1e3)
    return {"start_s": start_s, "search_ms": search, "recommend_ms": recommend}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "first_requests.json"))
    ap.add_argument("--child", choices=("warm", "cold"), help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns.child:
        print(json.dumps(child(ns.artifacts, ns.child == "warm")))
        return 0
    if ns.repeats < 1:
        ap.error("--repeats must be >= 1")
    runs: dict[str, list[dict]] = {"warm-up (as shipped)": [], "no warm-up": []}
    for _ in range(ns.repeats):
        for name, flag in (("no warm-up", "cold"), ("warm-up (as shipped)", "warm")):
            out = subprocess.run([sys.executable, "-m", "bench.first_requests", "--artifacts", ns.artifacts,
                                  "--child", flag], capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "start_s": round(float(np.median([r["start_s"] for r in rs])), 2),
            **{f"{ep}_ms": [round(float(np.median([r[f"{ep}_ms"][i] for r in rs])), 1) for i in range(N_FIRST)]
               for ep in ("search", "recommend")}}
        s = summary[name]
        print(f"{name:<22} start {s['start_s']:.2f} s   first searches {s['search_ms']} ms   "
              f"first recommendations {s['recommend_ms']} ms", flush=True)
    result = {"benchmark": "first_requests", "commit": git_commit(), "machine": machine(), "repeats": ns.repeats,
              "median": summary, "runs": runs}
    write_result(ns.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
