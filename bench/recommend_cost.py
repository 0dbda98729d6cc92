"""What a recommendation costs with one set of artifacts against another, paired per shopper.

The Retriever deployment's own class body (candidates, the behaviour model, EASE, the learned
ranker, reasons for the k returned items) runs in this process twice: once on the baseline
artifacts (e.g. a pipeline run before a change) and once on the candidate artifacts. The same
sampled shoppers with a history go through both, alternating which goes first, so drift in the
box's speed falls on both alike.

    python -m bench.recommend_cost --baseline /tmp/artifacts_before --artifacts artifacts
                                                         # bench/results/recommend_cost.json
    python -m bench.recommend_cost --baseline artifacts --artifacts artifacts --baseline-profiles recent \
        --out bench/results/recommend_cost_seeds.json    # what whole-history seed profiles cost

Both roots need a ranker version that serves shoppers with a history (make demo, or the pipeline).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.serve_latency import pct
from features.artifacts import git_commit
from jobs.common import one_blas_thread

RESULTS = Path(__file__).resolve().parent / "results"


def _retriever(root: str):
    from serving.app import load_serve_config
    from serving.retriever import RetrieverCore
    from serving.settings import ServingConfig, resolve

    state = tempfile.mkdtemp(prefix="bench-recommend-cost-")
    conf = load_serve_config(overrides=[f"artifacts_root={Path(root).resolve()}", f"state_dir={state}"])
    cfg = ServingConfig.from_args(conf["args"])
    res = resolve(cfg)
    if res.ranker_dir is None:
        raise SystemExit(f"no learned ranker serves under {root}/ranker; run make demo or the pipeline first")
    return RetrieverCore(cfg, res), cfg, res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="artifacts root before the change")
    ap.add_argument("--artifacts", default="artifacts", help="artifacts root after the change")
    ap.add_argument("--users", type=int, default=500, help="sampled shoppers with a history")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--baseline-profiles", choices=("seed", "recent"), default="seed",
                    help="recent: the baseline's shoppers are folded from their last 50 interactions, as serving "
                         "seeded them before the whole-history seeds (then one artifacts root can be both sides)")
    ap.add_argument("--out", default=str(RESULTS / "recommend_cost.json"))
    ns = ap.parse_args(argv)

    import polars as pl

    from features import artifacts as A
    from features.profiles.seed import seed_profiles, seeded_with
    from features.retrieval.ranking import context_for

    sides = {"baseline": ns.baseline, "candidate": ns.artifacts}
    built = {name: _retriever(root) for name, root in sides.items()}
    p = built["baseline"][1].profiles.params
    features_dir = built["baseline"][2].features_dir
    users = pl.read_parquet(A.join(features_dir, "users"))
    sample = users.sample(min(len(users), ns.users * 3), seed=0)
    seeds = seeded_with(features_dir)
    use = {"baseline": seeds if ns.baseline_profiles == "seed" else None, "candidate": seeds}
    profiles = {name: [prof for prof in seed_profiles(sample, r.live.catalog.lookup, p, use[name]) if prof.recent_items][: ns.users]
                for name, (r, _, _) in built.items()}
    assert [q.user_id for q in profiles["baseline"]] == [q.user_id for q in profiles["candidate"]]  # paired
    now = time.time()
    lat = {name: [] for name in sides}
    parts = {name: {"retrieve": [], "rank": []} for name in sides}
    for i in range(min(20, len(profiles["baseline"]))):  # warm-up
        for name, (r, _, _) in built.items():
            ctx = context_for("recommend", profiles[name][i], now, p)
            r.recommend(ctx, None, ctx.purchased, ns.k)
    n = min(len(v) for v in profiles.values())
    with one_blas_thread():  # as in a replica (a Ray actor with one CPU's worth of threads)
        for i in range(n):
            for name in (("baseline", "candidate") if i % 2 == 0 else ("candidate", "baseline")):
                r = built[name][0]
                ctx = context_for("recommend", profiles[name][i], now, p)
                t0 = time.perf_counter()
                _, timings = r.recommend(ctx, None, ctx.purchased, ns.k)
                lat[name].append((time.perf_counter() - t0) * 1e3)
                for part in ("retrieve", "rank"):
                    parts[name][part].append(timings[part])
    runs = {}
    for name, (r, _, res) in built.items():
        booster = r.ranker.scorer.learned.boosters["recommend"] if r.ranker.scorer.learned else None
        runs[name] = {"artifacts": sides[name], "ranker": res.ranker_dir, "requests": len(lat[name]),
                      "ranker_trees": booster.num_trees() if booster is not None else 0,
                      "ease_items": len(r.live.catalog.ease),
                      "recommend_p50_ms": pct(lat[name], 50), "recommend_p99_ms": pct(lat[name], 99),
                      "retrieve_p50_ms": pct(parts[name]["retrieve"], 50), "rank_p50_ms": pct(parts[name]["rank"], 50)}
        print(name, json.dumps(runs[name]), flush=True)
    diff = np.array(lat["candidate"]) - np.array(lat["baseline"])
    report = {
        "commit": git_commit(),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "command": f"python -m bench.recommend_cost --baseline {ns.baseline} --artifacts {ns.artifacts}"
                   + (f" --baseline-profiles {ns.baseline_profiles}" if ns.baseline_profiles != "seed" else ""),
        "baseline_profiles": {"seed": "the feature job's seeds (every event)",
                              "recent": "folded from each shopper's last 50 interactions"}[ns.baseline_profiles],
        "k": ns.k, "shoppers": "sampled from the baseline feature job's users, with a history",
        "runs": runs,
        "recommend_p50_growth_ms": round(runs["candidate"]["recommend_p50_ms"] - runs["baseline"]["recommend_p50_ms"], 3),
        "paired_difference_ms": {"median": pct(list(diff), 50), "mean": round(float(diff.mean()), 3)},
    }
    Path(ns.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("recommend_p50_growth_ms", "paired_difference_ms")}), flush=True)
    print(f"wrote {ns.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
