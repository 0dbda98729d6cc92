"""What the behaviour model adds to a recommendation's CPU time, measured on serving's own code.

    python -m bench.sequence_cost --run runs/<version> [--requests 500] [--repeats 3]

Takes an evaluation run's stages (its features, the system's index, its behaviour model and its
learned ranker; `jobs.evaluate` writes them under runs/<version>/) and its next-basket test
requests with their replayed profiles, then times serving's recommend path in one process, request
by request, with and without the behaviour model bound to the catalog, interleaved (A, B, A, B ...
so drift hits both): context -> [behaviour-model user vector] -> LiveCatalog.recommend (its top
items added as candidates) -> rank_candidates (features, learned ranker, TreeSHAP reasons for the k
returned). The difference of the medians is what a recommend request pays for the model; the
Serve bench adds the same to each request (the model runs in the Retriever replica, once per
request).

Writes bench/results/sequence_cost.json with the commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from features import artifacts as A
from features.evaluation import splits as ES
from features.models.learned_ranker import LearnedRanker, WithFallback
from features.models.sequence_io import attach
from features.profiles.profile import ProfileParams
from features.retrieval.catalog import load_catalog
from features.retrieval.live import LiveCatalog, RetrievalConfig
from features.retrieval.ranking import HandWeights, attach_sequence, context_for, rank_candidates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="an evaluation run folder (runs/<version>)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default="bench/results/sequence_cost.json")
    ns = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # as a Serve replica with num_cpus 1
    result = json.loads((Path(ns.run) / "metrics.json").read_text())
    rec, cfg = result["recommend"], result["config"]
    st = rec["stages"]
    if not st.get("sequence"):
        raise SystemExit(f"{ns.run}: no behaviour model in this run (sequence.enabled was false)")
    sys_index = st["index_fine_tuned"] if rec["notes"].get("system encoder", "").startswith("fine-tuned") else st["index_zero_shot"]
    catalog, index = load_catalog(st["features"], sys_index)
    events, _, _ = ES.read_inputs(cfg["events"], cfg["items"])
    plan = ES.plan_split(events, ES.SplitSpec.parse(cfg["split"]), cfg["ranker_days"], cfg["ranker_requests_per_user"])
    reqs = ES.build_requests(events, plan.test_requests, cfg["exclude_purchased"], ns.requests, 0)
    params = ProfileParams(**{k: v for k, v in cfg["profiles"].items()})
    reqs.profiles = ES.attach_profiles(reqs, events, catalog, params)
    scorer = WithFallback(LearnedRanker.load(rec["ranker"]["path"]), HandWeights())
    live = LiveCatalog(catalog, index, None, replace(RetrievalConfig(), lexical=False))
    attach(catalog, st["sequence"])
    model = catalog.sequence

    def one(q: int, with_model: bool) -> float:
        catalog.sequence = model if with_model else None
        t0 = time.perf_counter()
        ctx = context_for("recommend", reqs.profiles[q], float(reqs.ts[q]), params)
        ids = live.recommend(ctx.user_vector(), [i for i, _ in ctx.recent_items], None, None, reqs.exclude[q],
                             attach_sequence(ctx, catalog))
        rank_candidates(ctx, ids, catalog, scorer, ns.k)
        return (time.perf_counter() - t0) * 1e3

    for q in range(min(50, len(reqs))):  # warm-up, both paths
        one(q, True), one(q, False)
    lat: dict[str, list[float]] = {"with": [], "without": []}
    seq_only: list[float] = []
    for _ in range(ns.repeats):
        for q in range(len(reqs)):
            lat["with"].append(one(q, True))
            lat["without"].append(one(q, False))
            ctx = context_for("recommend", reqs.profiles[q], float(reqs.ts[q]), params)
            catalog.sequence = model
            t0 = time.perf_counter()
            attach_sequence(ctx, catalog)
            seq_only.append((time.perf_counter() - t0) * 1e3)

    def pct(v: list[float]) -> dict:
        a = np.array(v)
        return {"p50": round(float(np.percentile(a, 50)), 3), "p90": round(float(np.percentile(a, 90)), 3),
                "p99": round(float(np.percentile(a, 99)), 3)}

    out = {"benchmark": "sequence_cost", "commit": A.git_commit(), "run": ns.run, "requests": len(reqs),
           "repeats": ns.repeats, "k": ns.k, "torch_threads": 1, "machine": platform.processor() or platform.machine(),
           "recommend_ms_with_model": pct(lat["with"]), "recommend_ms_without_model": pct(lat["without"]),
           "user_vector_ms": pct(seq_only),
           "p50_added_ms": round(float(np.percentile(lat["with"], 50) - np.percentile(lat["without"], 50)), 3)}
    Path(ns.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k not in ("machine",)}, indent=1))


if __name__ == "__main__":
    main()
