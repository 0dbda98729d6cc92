"""Does a ranking feature or a LightGBM setting earn its place? Validation only, no test request read.

    python -m bench.ranker_ablation --run runs/<version> [--variants without:history_max_sim ...]
                                    [--seeds 5] [--out bench/results/ranker_ablation_<split>.json]

It replays the ranker stage of a finished `jobs.evaluate` run (its folder keeps every input): the
ranker requests of the run's split with the run's config, their candidate lists built from the
features version, index and behaviour model the run's ranker was trained on (the paths in its
manifest), and the same split of the lists by shopper (`jobs.train_ranker.split_by_shopper`, the
same seed). Then, for each seed, it trains the ranker as configured (the baseline) and each variant
on the training shoppers' lists and scores every list of the held-out shoppers: NDCG@10 of the
top 10 against ALL the request's relevant items, so a request whose items were not retrieved
scores 0 (the evaluation's definition). Per list, the NDCG of a variant is averaged over the seeds
(LightGBM's row sampling makes one model's score vary by about 0.005 on these lists), and the
verdict is the paired 95% bootstrap interval of variant minus baseline, on every valid list and
on the segments: shoppers with a history, next-basket lists only (the in-session lists are the
same baskets half revealed), and both.

Variants:
- without:<feature>[+<feature>...]: those columns set to 0 (a constant column gets no split, so
  the model is trained as if the feature did not exist); how every ranking feature since item_age
  was chosen: a feature is kept when the ranker with it beats the ranker without it;
- params:<JSON>: LightGBM parameters over the run's (e.g. params:{"num_leaves": 31});
- ensemble:<N>: N rankers trained as configured with different seeds (LightGBM samples 80% of
  the rows per tree, so each seed's model differs), their scores averaged per candidate; each
  seed of the bench draws N new seeds;
- train:history: trained (and early-stopped) on the lists of shoppers with a history only, the
  shoppers the learned ranker ranks by default (guests keep the hand weights' popularity order),
  so no tree is spent on guest lists it never ranks;
- retriever:<JSON>: recommend's candidate sources sized otherwise (e.g.
  retriever:{"sequence_candidates": 200}): the lists are built again with those settings, the
  ranker trained on them, and the same held-out shoppers' lists scored, so a larger pool counts
  both what it adds to recall and what it costs the ranking (a relevant item left out scores 0).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from bench.feature_job import RESULTS, machine, write_result
from features import artifacts as A
from features import metrics as M
from features.config import from_dict
from features.evaluation import splits as ES
from features.evaluation.search import paired
from features.models.learned_ranker import train_booster
from features.retrieval.feature_names import FEATURE_NAMES
from features.retrieval.live import RetrievalConfig
from jobs import evaluate as EV
from jobs import train_ranker as TRK

K = 10


TRAIN_ON = ("history",)


def parse_variant(text: str) -> tuple[str, list[int], dict, dict, int]:
    """'without:a+b', 'params:{json}', 'retriever:{json}', 'ensemble:N' or 'train:history' -> (name,
    feature columns to zero, LightGBM params, retriever settings, models averaged)."""
    kind, _, arg = text.partition(":")
    if kind == "train":
        if arg not in TRAIN_ON:
            raise ValueError(f"--variants {text!r}: train takes one of {', '.join(TRAIN_ON)}")
        return text, [], {}, {}, 1
    if kind == "ensemble":
        if not arg.isdigit() or not 2 <= int(arg) <= 20:
            raise ValueError(f"--variants {text!r}: ensemble takes the number of models, 2 to 20")
        return text, [], {}, {}, int(arg)
    if kind == "without":
        names = [n for n in arg.split("+") if n]
        unknown = [n for n in names if n not in FEATURE_NAMES]
        if not names or unknown:
            raise ValueError(f"--variants {text!r}: unknown feature(s) {unknown or '(none given)'}; "
                             f"allowed: {', '.join(FEATURE_NAMES)}")
        return text, [FEATURE_NAMES.index(n) for n in names], {}, {}, 1
    if kind in ("params", "retriever"):
        try:
            params = json.loads(arg)
        except json.JSONDecodeError as e:
            raise ValueError(f"--variants {text!r}: {kind} must be a JSON object ({e})") from None
        if not isinstance(params, dict) or not params:
            raise ValueError(f"--variants {text!r}: {kind} must be a non-empty JSON object")
        if kind == "params":
            return text, [], params, {}, 1
        allowed = [f.name for f in fields(RetrievalConfig)]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"--variants {text!r}: unknown retriever setting(s) {unknown}; allowed: {', '.join(allowed)}")
        try:  # its own checks (counts >= 0, ...) before any replay
            replace(RetrievalConfig(), **params)
        except (TypeError, ValueError) as e:
            raise ValueError(f"--variants {text!r}: {e}") from None
        return text, [], {}, params, 1
    raise ValueError(f"--variants {text!r}; allowed: without:<feature>[+<feature>...], params:<JSON object>, "
                     "retriever:<JSON object>, ensemble:<N>, train:history")


def _resolve(path: str | None, run: Path) -> str | None:
    """A path as the run wrote it: relative to where the evaluation ran (the run's grandparent)."""
    if path is None or A.is_uri(path) or Path(path).is_absolute() or Path(path).exists():
        return path
    return str(run.parent.parent / path)


def ndcg_full(scores: np.ndarray, y: np.ndarray, g: np.ndarray, n_relevant: np.ndarray, n_requests: int) -> np.ndarray:
    """NDCG@K per request (NaN for requests without rows here) against all its relevant items:
    the evaluation's metric (features/metrics.py), with every relevant item in the ideal list."""
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    groups = [g[a] for a in bounds[:-1]]
    ranked = [y[a:b][np.argsort(-scores[a:b], kind="stable")] for a, b in zip(bounds[:-1], bounds[1:])]
    out = np.full(n_requests, np.nan)
    out[groups] = M.graded_ndcg_per_query(ranked, [np.ones(n_relevant[q]) for q in groups], K)
    return out


def replay(run: Path, log=print, retriever: dict | None = None) -> tuple:
    """The run's ranker lists: (x, y, g, stats, ranker config, evaluation config); `retriever`
    overrides the run's candidate settings."""
    metrics = json.loads((run / "metrics.json").read_text())
    if not metrics.get("config", {}).get("events"):
        raise SystemExit(f"{run}: a search-only run (events: null) has no recommendation ranker to replay")
    ecfg = from_dict(EV.EvaluateConfig, metrics["config"])
    manifests = sorted((run / "artifacts" / "ranker").glob("*/manifest.json"))
    if not manifests:
        raise SystemExit(f"{run}: no ranker version under artifacts/ranker (did the run reach its ranker stage?)")
    rcfg = from_dict(TRK.TrainRankerConfig, json.loads(manifests[-1].read_text())["config"])
    rcfg = replace(rcfg, features=_resolve(rcfg.features, run), index=_resolve(rcfg.index, run),
                   sequence=_resolve(rcfg.sequence, run), events=_resolve(ecfg.events, run), items=_resolve(ecfg.items, run))
    if retriever:
        rcfg = replace(rcfg, retriever=replace(rcfg.retriever, **retriever))
    events, _, _ = ES.read_inputs(rcfg.events, rcfg.items)
    plan = ES.plan_split(events, ES.SplitSpec.parse(ecfg.split), ecfg.ranker_days, ecfg.ranker_requests_per_user)
    log(f"replaying the ranker stage of {run} ({ecfg.split}): features {rcfg.features}, index {rcfg.index}")
    x, y, g, stats = TRK.build_training_data(rcfg, rcfg.features, rcfg.index, events,
                                             requests=ES.with_in_session(plan.ranker_requests, ecfg.reveal),
                                             point_in_time=plan.ranker_events if EV.uses_point_in_time(plan) else None,
                                             log=log)
    return x, y, g, stats, rcfg, ecfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a jobs.evaluate run folder, runs/<version>")
    ap.add_argument("--variants", nargs="+", default=["without:history_max_sim", "without:item_age"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    try:
        variants = [parse_variant(v) for v in args.variants]  # bad input fails before the replay
    except ValueError as e:
        raise SystemExit(str(e)) from None
    run = Path(args.run)
    if not (run / "metrics.json").is_file():
        raise SystemExit(f"--run {run}: no metrics.json there; give a jobs.evaluate run folder (runs/<version>)")
    t0 = time.perf_counter()
    commit = A.git_commit()  # the code this process runs (a commit made while it runs is not it)
    log = print
    x, y, g, stats, rcfg, ecfg = replay(run, log)
    users = stats["request_users"]
    n_req = len(users)
    tr, va, valid_users, n_shoppers = TRK.split_by_shopper(users, y, g, rcfg.seed, rcfg.valid_fraction)
    valid_req = np.isin(np.asarray(users, dtype=object).astype(str), list(valid_users))
    nrel = np.asarray(stats["request_n_relevant"], np.int64)
    segments = {"all": valid_req, "with_history": valid_req & np.asarray(stats["request_has_history"], bool)}
    next_basket = ~np.asarray(stats["request_in_session"], bool)
    segments |= {"next_basket": valid_req & next_basket, "next_basket_with_history": segments["with_history"] & next_basket}

    lists = {"{}": (x, y, g, tr, va)}  # the candidate lists of each retriever setting, built once

    def lists_for(retriever: dict) -> tuple:
        key = json.dumps(retriever, sort_keys=True)
        if key not in lists:
            x2, y2, g2, st2, _, _ = replay(run, log, retriever)
            tr2, va2, valid2, _ = TRK.split_by_shopper(st2["request_users"], y2, g2, rcfg.seed, rcfg.valid_fraction)
            if st2["request_users"] != users or valid2 != valid_users:  # the same requests, the same held-out shoppers
                raise SystemExit(f"retriever:{key}: the replay's requests or held-out shoppers differ from the run's; "
                                 "a request without any candidate under one setting changes the split")
            log(f"  retriever:{key}: {st2['rows']:,} candidate rows, {st2['candidate_hit_rate']:.1%} of requests "
                "with a relevant candidate")
            lists[key] = (x2, y2, g2, tr2, va2)
        return lists[key]

    has_history = np.asarray(stats["request_has_history"], bool)

    def fit(name: str, cols: list[int], params: dict, retriever: dict, seed: int, members: int) -> tuple[np.ndarray, int]:
        x, y, g, tr, va = lists_for(retriever)
        if name == "train:history":
            tr, va = tr & has_history[g], va & has_history[g]
        xx = x.copy() if cols else x
        if cols:
            xx[:, cols] = 0.0
        rows = valid_req[g]  # every list of a held-out shopper is scored, with or without a positive
        scores, its = np.zeros(int(rows.sum())), []
        for m in range(members):  # one model: the bench's seed; an ensemble: `members` seeds of its own
            s = rcfg.lightgbm.seed + (seed if members == 1 else 1000 + seed * members + m)
            booster, _ = train_booster(xx[tr], y[tr], g[tr], rcfg.lightgbm, valid=(xx[va], y[va], g[va]),
                                       extra_params={"num_threads": args.threads, "seed": s, **params})
            scores += booster.predict(xx[rows], num_iteration=booster.best_iteration)
            its.append(int(booster.best_iteration))
        return ndcg_full(scores / members, y[rows], g[rows], nrel, n_req), int(np.mean(its))

    arms = [("as configured", [], {}, {}, 1)] + variants
    per_list = {name: [] for name, *_ in arms}
    iters = {name: [] for name, *_ in arms}
    for seed in range(args.seeds):
        for name, cols, params, retriever, members in arms:
            v, it = fit(name, cols, params, retriever, seed, members)
            per_list[name].append(v)
            iters[name].append(it)
            print(f"seed {seed} {name:<40} valid NDCG@{K} {np.nanmean(v[valid_req]):.4f} ({it} rounds)", flush=True)
    base = np.mean(per_list["as configured"], axis=0)
    out_variants = []
    for name, *_ in variants:
        mine = np.mean(per_list[name], axis=0)
        seg = {}
        for s, m in segments.items():
            p = paired(mine[m], base[m], rcfg.seed)
            seg[s] = {"lists": int(m.sum()), "baseline": round(float(np.nanmean(base[m])), 6),
                      "variant": round(float(np.nanmean(mine[m])), 6), **p}
        out_variants.append({"variant": name, "best_iterations": iters[name], "segments": seg})
        print(f"{name}: " + "; ".join(f"{s} {v['variant']:.4f} vs {v['baseline']:.4f}, {v['paired_difference']:+.4f} "
                                      f"{v['paired_difference_ci95']}" for s, v in seg.items()), flush=True)
    result = {
        "bench": "ranker_ablation", "commit": commit, "run": str(run), "split": ecfg.split,
        "ranker_inputs": {"features": rcfg.features, "index": rcfg.index, "sequence": rcfg.sequence},
        "lightgbm": rcfg.lightgbm.lgb_params(), "seeds": args.seeds,
        "lists": {"requests": n_req, "rows": int(stats["rows"]), "candidate_hit_rate": stats["candidate_hit_rate"],
                  "train_lists": int(len(np.unique(g[tr]))), "valid_requests": int(valid_req.sum()),
                  "valid_shoppers": len(valid_users), "shoppers": n_shoppers},
        "metric": f"NDCG@{K} of each held-out shopper's list against all its relevant items, mean over seeds",
        "baseline_best_iterations": iters["as configured"], "variants": out_variants,
        "seconds": round(time.perf_counter() - t0, 1), "machine": machine(),
    }
    kind = "leave_last" if ecfg.split == "leave-last" else "time_split"
    write_result(args.out or RESULTS / f"ranker_ablation_{kind}.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
