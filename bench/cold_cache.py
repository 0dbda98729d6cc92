"""Benchmark: how much slower memory-bound work gets when its data sat idle between requests.

    python -m bench.cold_cache [--requests 300] [--pause-ms 20]

A serving replica under load handles a request every few tens of milliseconds, and a search reads
about 13 MB of weights and vectors (the query tower's int8 blocks, the flat index's float32
vectors). This measures, on one thread, a matrix-vector product over 0.5, 4 and 16 MB of float32
weights (the shape of a model's layers), a pure-Python loop (no data) and the serving query
encoder (newest index, serving's query precision), each:
  - back to back;
  - with --pause-ms of sleep before each call (an idle core);
  - with --pause-ms of busy-waiting before each call (a busy core that touches no memory).
If the busy core is as slow as the idle one, the cost is not CPU idle states or frequency but the
data leaving the caches while the request waits, to other processes on the host: a property of
the machine that every server on it pays, ours and the hand-rolled one alike. p50 in ms.

Writes bench/results/cold_cache.json with the commit.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread, as a replica's
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS

import numpy as np  # noqa: E402

from bench.feature_job import RESULTS, machine, write_result  # noqa: E402
from features.artifacts import git_commit  # noqa: E402

MODES = ("back to back", "sleep", "busy-wait")


def _p50_ms(fn: Callable[[int], object], n: int, mode: str, pause_s: float) -> float:
    lat = []
    for i in range(n):
        if mode == "sleep":
            time.sleep(pause_s)
        elif mode == "busy-wait":
            until = time.perf_counter() + pause_s
            while time.perf_counter() < until:
                pass
        t0 = time.perf_counter()
        fn(i)
        lat.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(lat[n // 10:], 50))  # the first tenth warms up


def _query_encoder(artifacts: str) -> tuple[Callable[[int], object], str] | None:
    """The serving query encoder over distinct catalog-word queries, or None without an index."""
    import polars as pl

    from bench.serve_latency import make_queries
    from features import artifacts as A
    from features.data import schema as S
    from serving.app import load_serve_config
    from serving.settings import ServingConfig, resolve

    if A.latest_complete(artifacts, "index") is None:
        return None
    from serving.encoder import load_query_encoder

    cfg = ServingConfig.from_args(load_serve_config(overrides=[f"artifacts_root={artifacts}", "encoder.threads=1"])["args"])
    res = resolve(cfg)
    e = cfg.encoder
    enc, _ = load_query_encoder(cfg, res)  # exactly the encoder an Ingress replica serves queries with
    titles = pl.read_parquet(A.join(res.features_dir, "items"), columns=[S.TITLE])[S.TITLE].to_list()
    queries = make_queries(titles, 2000)
    return (lambda i: enc.encode([queries[i % len(queries)]], "query")), f"{e.runtime}, {e.query_precision}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--pause-ms", type=float, default=20.0)
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--out", default=str(RESULTS / "cold_cache.json"))
    ns = ap.parse_args(argv)
    if ns.requests < 20 or ns.pause_ms <= 0:
        ap.error("--requests must be >= 20 and --pause-ms > 0")
    rng = np.random.default_rng(0)
    work: dict[str, Callable[[int], object]] = {}
    for mb in (0.5, 4, 16):
        w = rng.standard_normal((int(mb * 2**20 / 4 / 384), 384)).astype(np.float32)
        x = rng.standard_normal(384).astype(np.float32)
        work[f"matrix-vector product, {mb:g} MB"] = lambda i, w=w, x=x: w @ x
    work["Python loop, no data"] = lambda i: sum(range(20_000))
    enc = _query_encoder(ns.artifacts)
    if enc is not None:
        work[f"query encoder ({enc[1]}), one query"] = enc[0]
    pause = ns.pause_ms / 1e3
    rows = {}
    for name, fn in work.items():
        rows[name] = {mode: round(_p50_ms(fn, ns.requests, mode, pause), 3) for mode in MODES}
        r = rows[name]
        r["sleep / back to back"] = round(r["sleep"] / r["back to back"], 2)
        r["busy-wait / back to back"] = round(r["busy-wait"] / r["back to back"], 2)
        print(f"{name:<48}" + "  ".join(f"{m} {r[m]:.3f}" for m in MODES)
              + f"   x{r['sleep / back to back']:.2f} / x{r['busy-wait / back to back']:.2f}", flush=True)
    out = {"benchmark": "cold_cache", "commit": git_commit(), "machine": machine(), "requests": ns.requests,
           "pause_ms": ns.pause_ms, "threads": 1, "p50_ms": rows}
    write_result(ns.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
