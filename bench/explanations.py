"""What the reasons of a recommendation cost, and whether the cheap explanation names the same
reasons as TreeSHAP.

The Retriever deployment's own class body (the behaviour model, the learned ranker, reasons for the
k returned items) runs in this process for sampled shoppers with a history, once with
`ranker.explanations: path` (decision-path contributions, features/models/tree_paths.py) and once
with `treeshap` (LightGBM's pred_contrib), and once without reasons (a request's `"reasons":
false`). All three rank identically (explanations do not change scores), so each result's reasons
can be compared one to one, and what the reasons cost is the difference to the third.

    python -m bench.explanations --artifacts artifacts     # bench/results/explanations.json

Needs a ranker version under artifacts/ranker (make demo, or the pipeline).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.serve_latency import pct
from features.artifacts import git_commit

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--users", type=int, default=500, help="sampled shoppers with a history")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default=str(RESULTS / "explanations.json"))
    ns = ap.parse_args(argv)

    import polars as pl

    from features import artifacts as A
    from features.profiles.seed import seed_profiles, seeded_with
    from features.retrieval.ranking import context_for
    from serving.app import load_serve_config
    from serving.retriever import RetrieverCore
    from serving.settings import ServingConfig, resolve

    state = tempfile.mkdtemp(prefix="bench-explanations-")
    modes = ("path", "treeshap", "none")
    retrievers, profiles, cfg, res = {}, [], None, None
    for mode in modes[:2]:
        conf = load_serve_config(overrides=[f"artifacts_root={Path(ns.artifacts).resolve()}", f"state_dir={state}",
                                            f"ranker.explanations={mode}"])
        cfg = ServingConfig.from_args(conf["args"])
        res = resolve(cfg)
        if res.ranker_dir is None:
            raise SystemExit(f"no learned ranker serves under {ns.artifacts}/ranker (none, or it did not beat the "
                             "hand-set weights on validation); run make demo or the pipeline first")
        retrievers[mode] = RetrieverCore(cfg, res)
    retrievers["none"] = retrievers["treeshap"]  # with explain=False
    catalog, p = retrievers["path"].live.catalog, cfg.profiles.params
    rows = pl.read_parquet(A.join(res.features_dir, "users"))
    profiles = [prof for prof in seed_profiles(rows.sample(min(len(rows), ns.users * 3), seed=0), catalog.lookup, p,
                                                   seeded_with(res.features_dir))
                if prof.recent_items][: ns.users]
    now = time.time()
    lat: dict[str, list[float]] = {m: [] for m in modes}
    rank_ms: dict[str, list[float]] = {m: [] for m in modes}
    answers: dict[str, list[list[dict]]] = {m: [] for m in modes}
    for prof in profiles[:20]:  # warm-up
        for mode in modes:
            ctx = context_for("recommend", prof, now, p)
            retrievers[mode].recommend(ctx, None, ctx.purchased, ns.k, explain=mode != "none")
    # the modes take turns per shopper (and which goes first), so drift in the box's speed falls on
    # all alike
    for i, prof in enumerate(profiles):
        for mode in (modes if i % 2 == 0 else modes[::-1]):
            ctx = context_for("recommend", prof, now, p)
            t0 = time.perf_counter()
            results, timings = retrievers[mode].recommend(ctx, None, ctx.purchased, ns.k, explain=mode != "none")
            lat[mode].append((time.perf_counter() - t0) * 1e3)
            rank_ms[mode].append(timings["rank"])
            answers[mode].append(results)
    runs: dict[str, Any] = {}
    for mode in modes:
        runs[mode] = {"requests": len(lat[mode]), "recommend_p50_ms": pct(lat[mode], 50),
                      "recommend_p99_ms": pct(lat[mode], 99), "rank_p50_ms": pct(rank_ms[mode], 50),
                      "rank_p99_ms": pct(rank_ms[mode], 99), "ranker": res.ranker_dir,
                      "ranker_describe": retrievers[mode].ranker.info()["recommend"] + (", no reasons" if mode == "none" else "")}
        print(mode, json.dumps(runs[mode]), flush=True)
    saved = np.array(rank_ms["treeshap"]) - np.array(rank_ms["path"])
    unexplained = np.array(rank_ms["treeshap"]) - np.array(rank_ms["none"])
    same_order = sum([a["item_id"] for a in x] == [b["item_id"] for b in y] for x, y in zip(answers["treeshap"], answers["none"]))

    same_items = same_reasons = same_first = results = 0
    for a_list, b_list in zip(answers["path"], answers["treeshap"]):
        for a, b in zip(a_list, b_list):
            results += 1
            if a["item_id"] != b["item_id"]:
                continue
            same_items += 1
            same_reasons += a["reasons"] == b["reasons"]
            same_first += (a["reasons"][:1] == b["reasons"][:1])
    report = {
        "commit": git_commit(),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "command": "python -m bench.explanations --artifacts artifacts",
        "k": ns.k, "shoppers": "sampled from the feature job's users, with a history (the learned ranker's segment)",
        "runs": runs,
        "speedup_recommend_p50": round(runs["treeshap"]["recommend_p50_ms"] / runs["path"]["recommend_p50_ms"], 3),
        "speedup_rank_p50": round(runs["treeshap"]["rank_p50_ms"] / runs["path"]["rank_p50_ms"], 3),
        "rank_ms_saved_per_request": {"median": pct(list(saved), 50), "mean": round(float(saved.mean()), 3)},
        "without_reasons": {"speedup_recommend_p50": round(runs["treeshap"]["recommend_p50_ms"] / runs["none"]["recommend_p50_ms"], 3),
                            "rank_ms_saved_per_request": {"median": pct(list(unexplained), 50),
                                                          "mean": round(float(unexplained.mean()), 3)},
                            "same_order_as_treeshap": f"{same_order} of {len(profiles)} requests"},
        "agreement": {"results": results, "same_item": same_items,
                      "same_reasons_share": round(same_reasons / max(same_items, 1), 4),
                      "same_first_reason_share": round(same_first / max(same_items, 1), 4)},
    }
    Path(ns.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("speedup_recommend_p50", "speedup_rank_p50", "rank_ms_saved_per_request",
                                         "without_reasons", "agreement")}), flush=True)
    print(f"wrote {ns.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
