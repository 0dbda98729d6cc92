"""Train the learned ranker (LightGBM lambdarank) on Ray Train, on real candidate lists.

    python -m jobs.train_ranker [--config jobs/configs/train_ranker.yaml] [--set key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.train_ranker ...

What it learns from: for each shopper's first `requests_per_user` interactions after the features
version's as_of (up to `window_days` later), and for the same interaction with its first half already in the session,
the candidates serving's retrieval returns for the profile they had just
before it (events replayed exactly as serving folds them), labelled 1 for an item of that
interaction. The features version must therefore be built with an as_of before the end of the
log (`make ranker` builds one 30 days back): its popularity and co-occurrence never saw the labels.

Steps: replay profiles -> candidates + features per request (features/evaluation/splits.py and methods.py, the same
functions serving calls) -> group-wise train/valid split -> Ray Train LightGBMTrainer (workers
train on whole request groups; data-parallel over LightGBM's network when num_workers > 1) ->
artifacts/ranker/<version>/{recommend/model.txt, manifest.json} with feature importances and the
valid NDCG@10 of the model next to the hand-set weights on the same candidate lists, overall and
for the lists of shoppers with and without a history; serving and evaluation use the model for a
segment only where it beat the hand weights there (`serves_learned_for`), and for guests only with
`learned_for_guests` (their ranking is otherwise popularity, as every baseline's).
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from features import artifacts as A
from features import metrics as M
from features.config import ConfigError, to_dict
from features.data import schema as S
from features.evaluation import methods as EM
from features.evaluation import search as SE
from features.evaluation import splits as ES
from features.models.learned_ranker import (
    SEGMENTS,
    LearnedRanker,
    RankerParams,
    group_sizes,
    importances,
    informative_groups,
)
from features.profiles.profile import ProfileParams
from features.retrieval.catalog import load_catalog
from features.retrieval.live import LiveCatalog, RetrievalConfig
from features.retrieval.ranking import FEATURE_NAMES, HandWeights
from jobs.common import (
    RayConfig,
    Steps,
    check_fits,
    free_cpus_per_worker,
    init_ray,
    load_job_config,
    one_blas_thread,
    parse_args,
    run_job,
    train_failure_config,
    train_run_dir,
)

KIND = "ranker"
REQUEST_DETAIL = ("request_in_session", "request_n_relevant")  # build_training_data stats for replays only


@dataclass(frozen=True)
class TrainRankerConfig:
    events: str = "data/canonical/online_retail/events.parquet"
    items: str = "data/canonical/online_retail/items.parquet"
    features: str | None = None  # a features version folder; null: the newest complete one under features_root
    features_root: str = "artifacts/ranker_stage"  # where `make ranker` writes the as_of-in-the-past features
    index: str | None = None  # an index version folder; null: the newest complete one under output_root
    # A behaviour-model version (jobs.train_sequence) trained on events before the label window
    # (--set until=<the features' as_of>); its score and rank become features. null: none.
    sequence: str | None = None
    output_root: str = "artifacts"
    window_days: float = 30.0  # requests: each user's first interactions within this long after as_of
    requests_per_user: int = 3  # that many per user, each with its own context
    exclude_purchased: bool = True  # as serving: buyers are not recommended what they bought
    # Also learn from in-session requests: this share of each basket already in the session, the
    # rest the labels. Without them no training list has a live session (the next basket comes
    # days later), and the model would learn to ignore the session features.
    in_session_reveal: float = 0.5  # 0: off
    # A seeded sample of this many requests (lists) when there are more; 0: all. Each list costs
    # serving's whole recommend path (about 11 ms on 2 CPUs with 40,000 items) and about 300
    # LightGBM rows, and more lists added nothing measurable (73% more under leave-last: +0.0009
    # [-0.0014, +0.0031] on held-out lists, docs/evaluation.md); the bundled log has about 5,000.
    max_requests: int = 20000
    valid_fraction: float = 0.2  # request groups held out for early stopping and the hand-weights comparison
    # A verdict on fewer valid lists than this is no verdict (a bootstrap interval over a handful of
    # lists is not a 95% interval): the segment keeps the hand weights and the manifest says why.
    min_valid_lists: int = 30
    # Guests (no history): their lists hold popular candidates only, and the model's only signals
    # there are popularity trends of the label window's month. On the month before the bundled
    # log's test month it beat the hand weights on 64 held-out guest lists and then lost to plain
    # popularity on that month's 552 guests (docs/evaluation.md, bench.validation_month). So guests
    # get the hand weights (their ranking is popularity, as every baseline's) unless this is true,
    # and then the held-out guest lists decide, as for shoppers with a history.
    learned_for_guests: bool = False
    num_workers: int = 1  # Ray Train LightGBM workers
    cpus_per_worker: int = 1
    lightgbm: RankerParams = field(default_factory=RankerParams)
    profiles: ProfileParams = field(default_factory=ProfileParams)
    retriever: RetrievalConfig = field(default_factory=lambda: RetrievalConfig(lexical=False))
    hand_weights: HandWeights = field(default_factory=HandWeights)
    seed: int = 0
    ray: RayConfig = field(default_factory=RayConfig)


class TooFewRequests(ValueError):
    """The label window holds too few request lists to train or validate a ranker on: a caller may
    go on with the hand-set weights (the evaluation does, and says so)."""


def check_config(cfg: TrainRankerConfig) -> None:
    if not 0 < cfg.valid_fraction < 1:
        raise ConfigError(f"valid_fraction must be in (0, 1), got {cfg.valid_fraction}")
    if cfg.min_valid_lists < 1:
        raise ConfigError(f"min_valid_lists must be >= 1, got {cfg.min_valid_lists}")
    if not 0 <= cfg.in_session_reveal < 1:
        raise ConfigError(f"in_session_reveal must be in [0, 1), got {cfg.in_session_reveal}")
    if cfg.window_days <= 0:
        raise ConfigError(f"window_days must be > 0, got {cfg.window_days}")
    for name in ("num_workers", "cpus_per_worker"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    check_fits(cfg.ray, cfg.num_workers * cfg.cpus_per_worker, 0, "num_workers x cpus_per_worker")


# --- the Ray Train loop ------------------------------------------------------------------------
def train_loop(config: dict) -> None:
    """Every worker trains on whole request groups (group g goes to worker g % world): a list is
    never split across workers. Rank 0 reports the model (text) as the checkpoint."""
    import ray.train
    from ray.train import Checkpoint

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    x, y, g, vx, vy, vg = ray.get(config["data_ref"])
    mine = (g % world) == rank
    extra = {"num_threads": config["threads"]}
    if world > 1:
        import ray.train.lightgbm

        extra |= {"tree_learner": "data_parallel", "pre_partition": True, **ray.train.lightgbm.get_network_params()}
    from features.models.learned_ranker import train_booster

    booster, info = train_booster(x[mine], y[mine], g[mine], config["params"], valid=(vx, vy, vg), extra_params=extra)
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            booster.save_model(str(Path(d) / "model.txt"))
            ray.train.report(info, checkpoint=Checkpoint.from_directory(d))
    else:
        ray.train.report(info)


def segment_verdict(learned: np.ndarray, hand: np.ndarray, seed: int, min_lists: int = 1) -> dict:
    """Learned vs hand weights on some valid lists (per-list NDCG@10). "Beats" as every report here
    means it (SE.beats: the paired 95% interval over the lists is above 0), on at least `min_lists`
    lists; fewer (none included) is no win, and `too_few_lists` says so."""
    if not len(learned):
        return {"lists": 0, "learned": 0.0, "hand_weights": 0.0, "paired_difference_ci95": [0.0, 0.0], "beats": False,
                "too_few_lists": min_lists > 0}
    won = SE.beats(learned, hand, seed)
    few = len(learned) < min_lists
    return {"lists": int(len(learned)), "learned": round(float(learned.mean()), 6),
            "hand_weights": round(float(hand.mean()), 6),
            "paired_difference_ci95": [round(float(v), 6) for v in won["paired_difference_ci95"]],
            "beats": bool(won["beats"]) and not few, "too_few_lists": few}


def _ndcg_per_group(scores: np.ndarray, y: np.ndarray, g: np.ndarray, k: int = 10) -> np.ndarray:
    """NDCG@k of each group with a positive, ranking its rows by `scores`."""
    values = []
    start = 0
    for n in group_sizes(g):
        s, lab = scores[start:start + n], y[start:start + n]
        start += n
        if lab.max() <= 0:
            continue
        order = np.argsort(-s, kind="stable")
        values.append(M.graded_ndcg([lab[order]], [lab], k))
    return np.asarray(values, np.float64)


def split_by_shopper(request_users: list[str], y: np.ndarray, g: np.ndarray, seed: int, valid_fraction: float
                     ) -> tuple[np.ndarray, np.ndarray, set[str], int]:
    """(train rows, valid rows, the valid shoppers, how many shoppers): a seeded `valid_fraction`
    of the shoppers holds out all their lists, so one shopper's lists never land on both sides.
    Lists without a positive are on neither side (they teach lambdarank nothing)."""
    users = np.asarray(request_users, dtype=object)
    shoppers = np.unique(users[np.unique(g)].astype(str))
    rng = np.random.default_rng(seed)
    valid_users = set(rng.choice(shoppers, max(1, int(len(shoppers) * valid_fraction)), replace=False).tolist())
    is_valid = np.isin(users[g].astype(str), list(valid_users))
    keep = informative_groups(y, g)
    tr, va = keep & ~is_valid, keep & is_valid
    if tr.sum() == 0 or va.sum() == 0:
        raise TooFewRequests(f"too few request lists with a relevant candidate to train a ranker "
                         f"({int(len(np.unique(g[keep])))} lists); use more requests or a wider window")
    return tr, va, valid_users, len(shoppers)


def build_training_data(cfg: TrainRankerConfig, features_dir: str, index_dir: str, events: pl.DataFrame,
                        window: tuple[dt.datetime, dt.datetime] | None = None,
                        requests: pl.DataFrame | None = None, log=print,
                        point_in_time: pl.DataFrame | None = None) -> tuple:
    """(X, y, group ids, stats) from the candidate lists of the requests (see the module doc).
    point_in_time: events to rebuild popularity from for each request's own time (the offline
    evaluation's leave-last split, features/evaluation/point_in_time.py); None: the features
    version's popularity for every request."""
    catalog, index = load_catalog(features_dir, index_dir)
    if cfg.sequence:
        from features.models.sequence_io import attach

        attach(catalog, cfg.sequence)
    if requests is None:
        start, end = window
        inter = ES.interactions(events)
        requests = ES.first_per_user(inter.filter((pl.col(S.TS) > start) & (pl.col(S.TS) <= end)),
                                    cfg.requests_per_user)
        if cfg.in_session_reveal > 0:
            requests = ES.with_in_session(requests, cfg.in_session_reveal)
    if point_in_time is not None:  # in time order: the popularity clock walks forward
        requests = requests.sort([S.TS, S.USER_ID])
    reqs = ES.build_requests(events, requests, cfg.exclude_purchased, cfg.max_requests, cfg.seed)
    if not len(reqs):
        raise TooFewRequests("no ranker requests: no user has an interaction (with an item not bought before) in the "
                         "label window; build the features with an earlier as_of or widen window_days")
    log(f"  {len(reqs):,} requests ({reqs.dropped:,} dropped without a new item); replaying profiles")
    reqs.profiles = ES.attach_profiles(reqs, events, catalog, cfg.profiles)
    live = LiveCatalog(catalog, index, None, cfg.retriever)
    clock = None
    if point_in_time is not None:
        from features.evaluation.point_in_time import catalog_clock

        clock = catalog_clock(point_in_time, catalog)
    with one_blas_thread():  # request by request, as a serving replica computes them
        x, y, g, stats = EM.candidate_lists(reqs, live, cfg.profiles, clock)
    stats["request_users"] = list(reqs.users)  # train() splits lists by shopper and drops this
    # ... and compares learned and hand weights on valid lists with and without a shopper history
    stats["request_has_history"] = [p is not None and bool(p.recent_items) for p in reqs.profiles]
    # ... and, for validation replays (bench/ranker_ablation.py), which lists are in-session and
    # how many relevant items each request has (retrieved or not); train() drops both.
    stats["request_in_session"] = [bool(r) for r in reqs.revealed]
    stats["request_n_relevant"] = [len(r) for r in reqs.relevant]
    log(f"  {stats['rows']:,} candidate rows; {stats['candidate_hit_rate']:.1%} of requests have a relevant candidate")
    return x, y, g, stats


def segment_line(name: str, seg: dict, served: bool, cfg: TrainRankerConfig) -> str:
    """One segment's verdict as the job prints it; a segment without a valid list (a log without
    guests) was not compared, so it gets no figures."""
    return (f"  shoppers {name.replace('_', ' ')}: "
            + (f"{seg['lists']:,} valid lists, learned {seg['learned']:.4f} vs hand {seg['hand_weights']:.4f}, "
               f"paired [95% CI {seg['paired_difference_ci95'][0]:+.4f}, {seg['paired_difference_ci95'][1]:+.4f}]"
               if seg["lists"] else "no valid lists")
            + ": serving uses " + ("the learned model" if served else "the hand-set weights")
            + (" (learned_for_guests=false)" if name == SEGMENTS[1] and not cfg.learned_for_guests else "")
            + (f" (too few valid lists to judge: fewer than min_valid_lists={cfg.min_valid_lists})"
               if seg.get("too_few_lists") and seg["lists"] else ""))


def train(cfg: TrainRankerConfig, x: np.ndarray, y: np.ndarray, g: np.ndarray, stats: dict,
          inputs: dict, log=print) -> str:
    """Train on Ray Train and write the ranker version; returns its folder."""
    import ray.train
    from ray.train.lightgbm import LightGBMTrainer

    req_users = stats.pop("request_users")
    has_history = stats.pop("request_has_history", None)
    for key in REQUEST_DETAIL:
        stats.pop(key, None)
    tr, va, valid_users, n_shoppers = split_by_shopper(req_users, y, g, cfg.seed, cfg.valid_fraction)
    log(f"  training lists: {len(np.unique(g[tr])):,} ({int(tr.sum()):,} rows), valid lists: {len(np.unique(g[va])):,} "
        f"({len(valid_users):,} of {n_shoppers:,} shoppers held out)")
    data_ref = ray.put((x[tr], y[tr], g[tr], x[va], y[va], g[va]))
    run_name = f"ranker-{A.new_version()}"
    storage, _ = train_run_dir(cfg.output_root, run_name)
    t0 = time.perf_counter()
    cpus = free_cpus_per_worker(cfg.num_workers, cfg.cpus_per_worker, "train_ranker")
    trainer = LightGBMTrainer(
        train_loop,
        train_loop_config={"data_ref": data_ref, "params": cfg.lightgbm, "threads": cpus},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, resources_per_worker={"CPU": cpus}),
        run_config=ray.train.RunConfig(name=run_name, storage_path=storage, failure_config=train_failure_config()),
    )
    result = trainer.fit()
    fit_s = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError("the ranker training run reported no model")
    version = A.new_version()
    out_dir = A.join(cfg.output_root, KIND, version)
    with result.checkpoint.as_directory() as d, A.staged(A.join(out_dir, "recommend")) as dest:
        (dest / "model.txt").write_bytes(Path(d, "model.txt").read_bytes())
    model = LearnedRanker.load(out_dir, manifest={})
    hand = cfg.hand_weights
    vx, vy, vg = x[va], y[va], g[va]
    learned_v = _ndcg_per_group(model.score(vx, "recommend"), vy, vg)
    hand_v = _ndcg_per_group(hand.score(vx, "recommend"), vy, vg)
    won = segment_verdict(learned_v, hand_v, cfg.seed, cfg.min_valid_lists)
    learned_ndcg, hand_ndcg = won["learned"], won["hand_weights"]
    lo, hi = won["paired_difference_ci95"]
    booster = model.boosters["recommend"]
    metrics = {
        "candidates": stats, "train_lists": int(len(np.unique(g[tr]))), "valid_lists": int(len(np.unique(vg))),
        "train_rows": int(tr.sum()), "best_iteration": int(result.metrics.get("best_iteration", 0)),
        "valid_ndcg@10_learned": learned_ndcg, "valid_ndcg@10_hand_weights": hand_ndcg,
        "valid_paired_difference_ci95": [lo, hi], "learned_beats_hand_weights_on_valid": won["beats"],
        "fit_s": round(fit_s, 2), "num_workers": cfg.num_workers,
    }
    first = np.r_[True, vg[1:] != vg[:-1]] if len(vg) else np.zeros(0, bool)  # one per valid list, in order
    if has_history is not None and len(learned_v) and len(learned_v) == int(first.sum()):
        # The same comparison on the valid lists of shoppers with and without a history (a guest's
        # list holds popular candidates only, where the model may add nothing to the hand weights).
        warm = np.asarray(has_history, dtype=bool)[vg[first]]
        metrics["valid_by_history"] = {
            name: segment_verdict(learned_v[mask], hand_v[mask], cfg.seed, cfg.min_valid_lists)
            for name, mask in zip(SEGMENTS, (warm, ~warm))}
    # Where serving and evaluation use the model: each segment on which it beat the hand weights
    # (the house rule, per segment); without the segments, both or neither by the overall verdict.
    by = metrics.get("valid_by_history")
    metrics["serves_learned_for"] = [s for s in SEGMENTS if (by[s]["beats"] if by else won["beats"])
                                     and (cfg.learned_for_guests or s != SEGMENTS[1])]
    manifest = A.manifest(KIND, version, to_dict(cfg), inputs=inputs,
                          outputs={"modes": ["recommend"], "model": "recommend/model.txt", "format": "lightgbm text",
                                   "features": list(FEATURE_NAMES), "importances": {"recommend": importances(booster)}},
                          metrics=metrics)
    A.write_manifest(out_dir, manifest)
    log(f"ranker {version} -> {out_dir}")
    log(f"  valid NDCG@10 on the candidate lists: learned {learned_ndcg:.4f} vs hand-set weights {hand_ndcg:.4f}, "
        f"paired difference [95% CI {lo:+.4f}, {hi:+.4f}]: "
        + ("it beats them" if won["beats"] else "it does not beat them")
        + (f" (on {won['lists']} lists, fewer than min_valid_lists={cfg.min_valid_lists}: no verdict)"
           if won["too_few_lists"] and won["lists"] else ""))
    for name, seg in metrics.get("valid_by_history", {}).items():
        log(segment_line(name, seg, name in metrics["serves_learned_for"], cfg))
    if "valid_by_history" not in metrics:
        log("  serving uses " + ("the learned model" if metrics["serves_learned_for"] else "the hand-set weights"))
    top = sorted(importances(booster).items(), key=lambda kv: -kv[1]["gain_share"])[:5]
    log("  top features (gain share): " + ", ".join(f"{k} {v['gain_share']:.2f}" for k, v in top))
    return out_dir


def run(cfg: TrainRankerConfig) -> str:
    check_config(cfg)
    steps = Steps("train_ranker")
    features_dir = cfg.features or A.latest_complete(cfg.features_root, "features")
    if features_dir is None:
        raise FileNotFoundError(f"no complete features version under {cfg.features_root}/features; run `make ranker` "
                                "(features with an as_of 30 days back, then this job)")
    index_dir = cfg.index or A.latest_complete(cfg.output_root, "index")
    if index_dir is None:
        raise FileNotFoundError(f"no complete index version under {cfg.output_root}/index; run `make index`")
    fm = A.read_manifest(features_dir)
    as_of = dt.datetime.fromisoformat(fm["metrics"]["as_of"])
    end = as_of + dt.timedelta(days=cfg.window_days)
    init_ray(cfg.ray)
    steps(f"read events; label window ({as_of.isoformat()}, {end.isoformat()}]")
    events, _, counts = ES.read_inputs(cfg.events, cfg.items)
    print(f"  {counts}", flush=True)
    steps("candidate lists of the window's requests (serving's retrieval + features)")
    x, y, g, stats = build_training_data(cfg, features_dir, index_dir, events.filter(pl.col(S.TS) <= end), (as_of, end))
    steps(f"LightGBM lambdarank on Ray Train ({cfg.num_workers} worker(s))")
    inputs = {"features": {"path": str(features_dir), "version": fm.get("version"), "as_of": as_of.isoformat()},
              "sequence": cfg.sequence,
              "index": {"path": str(index_dir), "version": A.read_manifest(index_dir).get("version")},
              "events": A.fingerprint(cfg.events), "label_window_end": end.isoformat()}
    out = train(cfg, x, y, g, stats, inputs)
    steps("done")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[1].strip(), "train_ranker.yaml", argv)

    def body() -> int:
        run(load_job_config(TrainRankerConfig, args))
        return 0

    return run_job("train_ranker", body)


if __name__ == "__main__":
    sys.exit(main())
