"""Fine-tune the two-tower encoder on the feature job's training examples with Ray Train.

    python -m jobs.train_encoder [--config jobs/configs/train_encoder.yaml] [--set key=value ...]
    python -m jobs.train_encoder --config jobs/configs/train_encoder_smoke.yaml   # < 1 minute
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.train_encoder ...

Steps: Ray Data reads examples/train of a features version, attaches each target's item text and
shuffles -> TorchTrainer (DDP over train.num_workers, CPU or GPU) runs AdamW with warmup on the
in-batch InfoNCE loss, evaluates Recall@10 / NDCG@10 on a valid sample against the FULL catalog
(zero-shot first, then every eval_every_steps), reports checkpoints, stops early -> the best
checkpoint is written to artifacts/encoder/<version>/model with manifest.json; the held-out test
split is then scored for the zero-shot encoder, the fine-tuned one and a popularity baseline.

Resume: a run is kept under <output_root>/train_runs/<run_name>. Re-running with
`--set run_name=<name>` continues from that run's last checkpoint (weights, optimizer, step).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from features import artifacts as A
from features import metrics as M
from features.config import ConfigError, to_dict
from features.data import schema as S
from features.models import training as TR
from features.models.encoder import EncoderConfig, TwoTowerEncoder
from jobs.common import (
    RayConfig,
    Steps,
    cached_get,
    check_fits,
    free_cpus_per_worker,
    init_ray,
    load_job_config,
    parse_args,
    run_job,
    train_failure_config,
    train_run_dir,
)

KIND = "encoder"
SCORE_METRIC = "valid_ndcg@10"
STOPPED_BY = ("max_steps", "patience", "max_time_s")  # what ended a run (its last report carries the index)
_ANCHOR_KEY, _TARGET_KEY, _TARGET_TEXT, _LOG_Q = "anchor_key", "target_key", "target_text", "log_q"


@dataclass(frozen=True)
class TrainEncoderConfig:
    features: str | None = None  # a features version folder; null: the newest complete one under output_root
    output_root: str = "artifacts"
    run_name: str | None = None  # Ray Train run; an existing name resumes from its last checkpoint
    init_from: str | None = None  # an encoder checkpoint folder to start from; null: encoder.model_dir
    kinds: tuple[Literal["history", "query"], ...] = ("history", "query")  # example kinds to train and evaluate on
    test_examples: int = 2000  # test-split sample for the final comparison; 0: all; -1: skip it
    ks: tuple[int, ...] = (10, 50)
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(max_length=32, batch_size=128))
    train: TR.TrainParams = field(default_factory=TR.TrainParams)
    ray: RayConfig = field(default_factory=RayConfig)


class TooFewExamples(ValueError):
    """The features hold too few examples to fine-tune on or to validate: a caller may go on with
    the zero-shot encoder (the pipeline and the evaluation do, and say so)."""


def check_config(cfg: TrainEncoderConfig) -> None:
    p = cfg.train
    if not cfg.kinds:  # the values themselves are checked by the config loader (Literal)
        raise ConfigError(f"kinds: must name at least one of {[k.value for k in S.ExampleKind]}")
    for name in ("num_workers", "cpus_per_worker", "batch_size", "max_steps", "eval_every_steps"):
        if getattr(p, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(p, name)}")
    if p.batch_size < 2:
        raise ConfigError("train.batch_size must be >= 2 (in-batch negatives)")
    check_fits(cfg.ray, p.num_workers * p.cpus_per_worker, p.num_workers * int(p.use_gpu),
               "train.num_workers x train.cpus_per_worker (and train.use_gpu)")
    if p.lr <= 0 or p.temperature <= 0 or p.max_time_s <= 0:
        raise ConfigError("train.lr, train.temperature and train.max_time_s must be > 0")
    if not cfg.ks or min(cfg.ks) < 1:
        raise ConfigError(f"ks must be positive integers, got {list(cfg.ks)}")


# --- data (driver + Ray Data) ------------------------------------------------------------------
def _attach(batch: pa.Table, catalog_ref, kinds: tuple[str, ...]) -> pa.Table:
    """Examples -> (anchor, target text, integer keys for loss masking); blank anchors dropped."""
    catalog = cached_get(catalog_ref)
    df = (
        pl.from_arrow(batch)
        .filter(pl.col(S.EXAMPLE_KIND).is_in(list(kinds)) & (pl.col(S.ANCHOR_TEXT).str.strip_chars() != ""))
        .join(catalog, left_on=S.TARGET_ITEM_ID, right_on=S.ITEM_ID, how="inner")
        .select(
            S.ANCHOR_TEXT,
            pl.col(S.ITEM_TEXT).alias(_TARGET_TEXT),
            pl.col("row").cast(pl.Int64).alias(_TARGET_KEY),
            pl.col(S.ANCHOR_TEXT).hash().reinterpret(signed=True).alias(_ANCHOR_KEY),
            pl.col(_LOG_Q),
        )
    )
    return df.to_arrow()


# --- the Ray Train loop (runs on every worker) -------------------------------------------------
def train_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    p: TR.TrainParams = config["train"]
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one line per report is our own job
    torch.set_num_threads(p.cpus_per_worker)
    torch.manual_seed(p.seed)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    catalog_texts, valid_anchors, valid_targets = ray.get(config["eval_ref"])

    if config["init_from"]:
        encoder = TwoTowerEncoder.load(config["init_from"])
    else:
        encoder = TwoTowerEncoder(config["encoder"])
    frozen_items = p.item_tower == "frozen"
    if frozen_items:
        TR.freeze_item_tower(encoder)
    n_trainable = TR.freeze(encoder, p.freeze_embeddings, p.freeze_layers)
    encoder.to(device)
    opt = torch.optim.AdamW([q for q in encoder.parameters() if q.requires_grad], lr=p.lr, weight_decay=p.weight_decay)
    state = {"step": 0, "epoch": 0, "best": None, "best_step": None, "bad_evals": 0, "samples": 0, "train_s": 0.0}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = TR.restore_into(encoder, d, opt)
        if rank == 0:
            print(f"resumed at step {state['step']} (best {SCORE_METRIC} {state['best']})", flush=True)
    model = ray.train.torch.prepare_model(TR.PairModel(encoder))
    use_amp = p.amp and device.type == "cuda"
    catalog_np = catalog_t = None
    if frozen_items:  # encoded once: the item tower never changes
        t0 = time.perf_counter()
        catalog_np = TR.encode_catalog(encoder, catalog_texts)
        catalog_t = torch.from_numpy(catalog_np).to(device)
        if rank == 0:
            print(f"item tower frozen: catalog of {len(catalog_texts):,} encoded in {time.perf_counter() - t0:.1f}s; "
                  f"training the query tower against the whole catalog", flush=True)

    def agree(flag: bool) -> bool:  # every rank takes the same stop decision
        if world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=TR.comm_device(encoder))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def validate(extra: dict) -> dict:
        """The valid metrics; each example's rank goes into the state (so into this step's checkpoint),
        which is how the driver compares the best checkpoint with zero-shot without encoding the
        catalog twice more (minutes on a CPU for tens of thousands of items)."""
        t0 = time.perf_counter()
        res, ranks = TR.evaluate_with_ranks(encoder, catalog_texts, valid_anchors, valid_targets, ks=config["ks"],
                                            item_emb=catalog_np)
        state["valid_ranks"] = ranks.tolist()
        state["eval_s"] = time.perf_counter() - t0
        return {f"valid_{k}": v for k, v in res.items()} | extra | {"step": state["step"], "eval_s": state["eval_s"]}

    if p.eval_zero_shot and state["step"] == 0 and ckpt is None:  # the zero-shot point of the curve, never a checkpoint
        m = validate({"zero_shot": True, "train_loss": float("nan")})
        state["zero_shot"] = {k: m[k] for k in m if k.startswith("valid_")}
        state["zero_shot_ranks"] = state["valid_ranks"]
        if rank == 0:
            print(f"step 0 (zero-shot): {SCORE_METRIC} {m[SCORE_METRIC]:.4f} valid_recall@10 {m['valid_recall@10']:.4f}", flush=True)
        ray.train.report(m)

    shard = ray.train.get_dataset_shard("train")
    t_run = time.perf_counter()
    base_train_s = state["train_s"]
    losses: list[float] = []
    done = state["step"] >= p.max_steps
    while not done:
        n_batches = 0
        for batch in shard.iter_batches(batch_size=p.batch_size, batch_format="numpy", drop_last=True,
                                        local_shuffle_buffer_size=p.shuffle_buffer,
                                        local_shuffle_seed=p.seed + 1000 * state["epoch"] + rank):
            n_batches += 1
            t_step = time.perf_counter()
            lr = TR.lr_at(state["step"], p.lr, p.warmup_steps, p.max_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = TR.pair_loss(model, encoder, list(batch[S.ANCHOR_TEXT]), list(batch[_TARGET_TEXT]),
                                    torch.tensor(batch[_TARGET_KEY]), torch.tensor(batch[_ANCHOR_KEY]),
                                    p.temperature, device,
                                    torch.tensor(batch[_LOG_Q]) if p.logq_correction else None, catalog_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([q for q in encoder.parameters() if q.requires_grad], 1.0)
            opt.step()
            # Pure step time (forward, backward, all-reduce, update): samples/s excludes evaluations.
            state["step_s"] = state.get("step_s", 0.0) + time.perf_counter() - t_step
            state["step"] += 1
            state["samples"] += p.batch_size * world
            losses.append(float(loss.item()))
            train_s = base_train_s + time.perf_counter() - t_run
            if rank == 0 and (state["step"] % 10 == 0 or state["step"] == 1):
                print(f"step {state['step']}/{p.max_steps} loss {np.mean(losses[-10:]):.3f} lr {lr:.2e} "
                      f"{state['samples'] / max(state['step_s'], 1e-9):.1f} samples/s ({world} workers, {n_trainable:,} trainable)",
                      flush=True)
            # Out of time once the evaluation that ends the run would no longer fit the budget.
            out_of_time = agree(train_s + state.get("eval_s", 0.0) > p.max_time_s)
            last = state["step"] >= p.max_steps or out_of_time
            if state["step"] % p.eval_every_steps and not last:
                continue
            state["train_s"] = train_s
            m = validate({"train_loss": float(np.mean(losses)) if losses else float("nan"),
                          "samples_per_s": state["samples"] / max(state["step_s"], 1e-9),
                          "lr": lr})
            losses = []
            if state["best"] is None or m[SCORE_METRIC] > state["best"]:
                state.update(best=m[SCORE_METRIC], best_step=state["step"], bad_evals=0)
            else:
                state["bad_evals"] += 1
            stop_early = state["bad_evals"] >= p.early_stopping_patience
            # The clock again after the evaluation, so an evaluation is never followed at once by
            # another one for the time budget; the last report says what ended the run.
            time_up = out_of_time or agree(base_train_s + time.perf_counter() - t_run + state["eval_s"] > p.max_time_s)
            m["stopped_by"] = (STOPPED_BY.index("max_steps") if state["step"] >= p.max_steps else
                               STOPPED_BY.index("patience") if stop_early else
                               STOPPED_BY.index("max_time_s") if time_up else -1)
            if rank == 0:
                print(f"step {state['step']}: {SCORE_METRIC} {m[SCORE_METRIC]:.4f} valid_recall@10 "
                      f"{m['valid_recall@10']:.4f} (best {state['best']:.4f} at step {state['best_step']})"
                      + (" - early stop" if stop_early else "") + (" - time budget reached" if time_up else ""),
                      flush=True)
                with tempfile.TemporaryDirectory() as tmp:
                    TR.save_checkpoint(tmp, encoder, opt, state)
                    ray.train.report(m, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(m)
            if m["stopped_by"] >= 0:
                done = True
                break
        if n_batches == 0:
            raise ValueError("the training split yields no full batch on this worker: lower train.batch_size "
                             "or train.num_workers, or build features with more data")
        state["epoch"] += 1


# --- driver ------------------------------------------------------------------------------------
def _popularity_ranks(catalog: pl.DataFrame, targets: np.ndarray) -> np.ndarray:
    """Ranks of the test targets under train-split target popularity (a baseline, no text)."""
    pop = catalog.sort("row")["target_count"].to_numpy().astype(np.float64)
    return M.target_ranks(np.broadcast_to(pop, (len(targets), len(pop))), targets)


def run(cfg: TrainEncoderConfig) -> int:
    import ray.train
    from ray.train.torch import TorchTrainer

    check_config(cfg)
    if cfg.train.item_tower == "frozen" and cfg.encoder.share_towers:
        cfg = replace(cfg, encoder=replace(cfg.encoder, share_towers=False))
        print("train.item_tower=frozen: training separate towers (encoder.share_towers=false)", flush=True)
    p = cfg.train
    steps = Steps("train_encoder")
    init_ray(cfg.ray)
    features_dir = cfg.features or A.latest_complete(cfg.output_root, "features")
    if features_dir is None:
        raise FileNotFoundError(f"no complete features version under {cfg.output_root}/features; run jobs.build_features first")
    features_manifest = A.read_manifest(features_dir)
    catalog = TR.catalog_frame(features_dir)
    catalog_texts = catalog[S.ITEM_TEXT].to_list()

    steps(f"read training examples of {features_dir} (Ray Data), attach item text, shuffle")
    catalog = TR.target_log_q(features_dir, catalog, cfg.kinds)
    catalog_ref = ray.put(catalog.select(S.ITEM_ID, S.ITEM_TEXT, "row", _LOG_Q))
    # In one order every run: Ray Data emits blocks as tasks finish and hands them to whichever Train
    # worker has had fewer rows, so without preserve_order one seed fed the workers other batches
    # each run and fine-tuned to other weights (valid NDCG@10 0.0082 and 0.0112 after 20 steps).
    ctx = ray.data.DataContext.get_current()
    ordered = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        train_ds = (
            ray.data.read_parquet(A.join(features_dir, "examples", S.Split.TRAIN.value))
            .map_batches(_attach, batch_format="pyarrow", batch_size=None,
                         fn_kwargs=dict(catalog_ref=catalog_ref, kinds=tuple(cfg.kinds)))
            .random_shuffle(seed=p.seed)
            .materialize()
        )
    finally:
        ctx.execution_options.preserve_order = ordered
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True  # the same shard of that order to the same worker
    n_train = train_ds.count()
    if n_train < p.batch_size * p.num_workers:
        raise TooFewExamples(f"only {n_train} training examples of kinds {list(cfg.kinds)} in {features_dir}; "
                         f"need at least train.batch_size * train.num_workers = {p.batch_size * p.num_workers}")
    valid_anchors, valid_targets = TR.eval_sample(features_dir, S.Split.VALID.value, catalog, cfg.kinds, p.valid_examples, p.seed)
    if not valid_anchors:
        raise TooFewExamples(f"the valid split of {features_dir} has no examples of kinds {list(cfg.kinds)}")
    print(f"  {n_train:,} training examples, {len(valid_anchors):,} valid examples, {len(catalog_texts):,} catalog items",
          flush=True)

    run_name = cfg.run_name or f"encoder-{A.new_version()}"
    storage, resumed = train_run_dir(cfg.output_root, run_name)
    p = replace(p, cpus_per_worker=free_cpus_per_worker(p.num_workers, p.cpus_per_worker, "train_encoder"))
    steps(f"fine-tune on Ray Train: {p.num_workers} worker(s) x {p.cpus_per_worker} CPU"
          f"{' + 1 GPU' if p.use_gpu else ''}, run {run_name}{' (resuming)' if resumed else ''}")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"train": p, "encoder": cfg.encoder, "init_from": cfg.init_from, "ks": tuple(cfg.ks),
                           "eval_ref": ray.put((catalog_texts, valid_anchors, valid_targets))},
        scaling_config=ray.train.ScalingConfig(num_workers=p.num_workers, use_gpu=p.use_gpu,
                                               resources_per_worker={"CPU": p.cpus_per_worker}
                                               | ({"GPU": 1} if p.use_gpu else {})),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage, failure_config=train_failure_config(),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=SCORE_METRIC,
                                                         checkpoint_score_order="max"),
        ),
        datasets={"train": train_ds},
        dataset_config=ray.train.DataConfig(execution_options=ingest),
    )
    t_fit = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - t_fit
    if not result.best_checkpoints:
        raise RuntimeError(f"training run {run_name} reported no checkpoint")
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1][SCORE_METRIC])
    last_metrics = result.metrics or {}

    version = A.new_version()
    out_dir = A.join(cfg.output_root, KIND, version)
    steps(f"export the best checkpoint (step {best_metrics['step']}) to {out_dir}")
    with best_ckpt.as_directory() as d:
        A.upload_dir(Path(d) / TR.MODEL_SUBDIR, A.join(out_dir, "model"))
        import json

        train_state = json.loads((Path(d) / TR.TRAIN_STATE).read_text())["state"]
    weights_sha = A.fingerprint(A.join(out_dir, "model", "model.safetensors"))["sha256"]

    tuned = TwoTowerEncoder.load(A.join(out_dir, "model"))
    vectors = CatalogVectors(cfg, catalog_texts)  # each model encodes the catalog once for both comparisons
    versus = None
    if train_state.get("zero_shot"):
        steps(f"the fine-tune against zero-shot on the {len(valid_anchors):,} valid examples, paired by example")
        known = [np.asarray(train_state.get(k, []), np.int64) for k in ("valid_ranks", "zero_shot_ranks")]
        if all(len(r) == len(valid_anchors) for r in known):  # ranked by the workers at that step and at step 0
            versus = TR.versus_base(known[0], known[1], k=10, seed=cfg.train.seed)
        else:  # a checkpoint written before the workers kept them: rank again here
            versus = versus_zero_shot(cfg, tuned, catalog_texts, valid_anchors, valid_targets, vectors)
    test: dict = {}
    if cfg.test_examples >= 0:
        anchors, targets = TR.eval_sample(features_dir, S.Split.TEST.value, catalog, cfg.kinds, cfg.test_examples, p.seed)
        steps(f"score the test split ({len(anchors):,} examples, full catalog): zero-shot vs fine-tuned vs popularity")
        if anchors:
            import torch

            torch.set_num_threads(max(1, cfg.ray.num_cpus))
            base = vectors.base
            ranks = _popularity_ranks(catalog, targets)
            test = {
                "examples": len(anchors),
                "zero_shot": TR.evaluate(base, catalog_texts, anchors, targets, ks=cfg.ks, item_emb=vectors.of(base)),
                "fine_tuned": TR.evaluate(tuned, catalog_texts, anchors, targets, ks=cfg.ks, item_emb=vectors.of(tuned)),
                "popularity": M.means(M.rank_sums(ranks, cfg.ks)),
            }

    steps("manifest")
    samples_per_s = best_metrics.get("samples_per_s") or last_metrics.get("samples_per_s")
    metrics = {
        "train_examples": n_train, "valid_examples": len(valid_anchors), "catalog_items": len(catalog_texts),
        "best_step": best_metrics["step"], "steps": last_metrics.get("step", train_state.get("step")),
        "max_steps": p.max_steps, "stopped_by": stopped_by(last_metrics),
        "valid_best": {k: v for k, v in best_metrics.items() if k.startswith("valid_")},
        "valid_zero_shot": train_state.get("zero_shot"),
        "train_samples_per_s": samples_per_s, "fit_s": fit_s, "test": test,
        # The zero-shot model is a candidate too: the fine-tune "beats" it only where the paired 95%
        # interval over the valid examples excludes 0 (a margin inside the noise keeps zero-shot).
        "beats_zero_shot_on_valid": None if versus is None else versus["beats"],
        "valid_vs_zero_shot": versus,
        "device": "gpu" if p.use_gpu else "cpu", "num_workers": p.num_workers,
    }
    A.write_manifest(out_dir, A.manifest(
        KIND, version, to_dict(cfg) | {"run_name": run_name},
        inputs={"features": {"path": str(features_dir), "version": features_manifest.get("version")}},
        outputs={"model": "model", "weights_sha256": weights_sha, "dim": tuned.dim},
        metrics=metrics,
    ))
    steps("done")
    _summary(out_dir, run_name, metrics, cfg.ks)
    return 0


def stopped_by(last_metrics: dict) -> str | None:
    """What ended the fine-tune ("max_steps", "patience" or "max_time_s"), from its last report; None
    for a run whose reports predate the field."""
    code = last_metrics.get("stopped_by")
    return STOPPED_BY[int(code)] if code is not None and 0 <= code < len(STOPPED_BY) else None


def starting_model(cfg: TrainEncoderConfig) -> TwoTowerEncoder:
    """The model the fine-tune started from (init_from, else the zero-shot encoder)."""
    return TwoTowerEncoder.load(cfg.init_from) if cfg.init_from else TwoTowerEncoder(replace(cfg.encoder))


class CatalogVectors:
    """The starting model, loaded once, and each model's catalog vectors, encoded once: the
    comparison with zero-shot and the test scoring rank the same catalog (with a frozen item tower
    the fine-tune's item vectors are the starting model's)."""

    def __init__(self, cfg: TrainEncoderConfig, catalog_texts: list) -> None:
        self.cfg, self.texts = cfg, list(catalog_texts)
        self._base: TwoTowerEncoder | None = None
        self._vectors: dict[int, np.ndarray] = {}

    @property
    def base(self) -> TwoTowerEncoder:
        if self._base is None:
            self._base = starting_model(self.cfg)
        return self._base

    def of(self, model: TwoTowerEncoder) -> np.ndarray:
        if self.cfg.train.item_tower == "frozen":  # the fine-tune kept the starting item tower
            model = self.base
        if id(model) not in self._vectors:
            self._vectors[id(model)] = model.encode(self.texts, tower="item", batch_size=self.cfg.encoder.batch_size)
        return self._vectors[id(model)]


def versus_zero_shot(cfg: TrainEncoderConfig, tuned: TwoTowerEncoder, catalog_texts: list, anchors: list,
                     targets: np.ndarray, vectors: CatalogVectors | None = None) -> dict:
    """The best checkpoint and the model it started from ranked on the same valid examples; the
    paired comparison that decides whether the index and the system use the fine-tune."""
    import torch

    torch.set_num_threads(max(1, cfg.ray.num_cpus))
    vectors = vectors or CatalogVectors(cfg, catalog_texts)
    bs = cfg.encoder.batch_size
    zs = TR.example_ranks(vectors.base, catalog_texts, anchors, targets, bs, item_emb=vectors.of(vectors.base))
    ft = TR.example_ranks(tuned, catalog_texts, anchors, targets, bs, item_emb=vectors.of(tuned))
    return TR.versus_base(ft, zs, k=10, seed=cfg.train.seed)


def _summary(out_dir: str, run_name: str, m: dict, ks: tuple[int, ...]) -> None:
    print(f"encoder -> {out_dir}   (run {run_name}; resume with --set run_name={run_name})")
    print(f"  {m['train_examples']:,} train examples; best step {m['best_step']} of {m['steps']} (stopped by "
          f"{m.get('stopped_by')}); "
          f"{m['train_samples_per_s'] or 0:.1f} samples/s on {m['num_workers']} {m['device']} worker(s); fit {m['fit_s']:.0f}s")
    zs, best = m.get("valid_zero_shot") or {}, m["valid_best"]
    zs_text = f"{zs['valid_ndcg@10']:.4f}" if "valid_ndcg@10" in zs else "not evaluated (train.eval_zero_shot=false)"
    print(f"  valid ({m['valid_examples']:,}): zero-shot NDCG@10 {zs_text} -> "
          f"fine-tuned {best.get('valid_ndcg@10', float('nan')):.4f}"
          + ("   (not surely better: see the paired interval)" if m.get("beats_zero_shot_on_valid") is False
             and best.get("valid_ndcg@10", 0) > zs.get("valid_ndcg@10", 1) else
             "   WARNING: fine-tuning did not beat the zero-shot model on valid; consider encoder=zero-shot"
             if m.get("beats_zero_shot_on_valid") is False else ""))
    v = m.get("valid_vs_zero_shot")
    if v:
        lo, hi = v["paired_difference_ci95"]
        print(f"  paired over the {v['examples']:,} valid examples: {v['paired_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] -> "
              + ("the fine-tune beats zero-shot" if v["beats"] else
                 "inside the noise or worse: the pipeline and the evaluation keep the zero-shot encoder"))
    t = m.get("test") or {}
    if t:
        cols = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
        print(f"  test split, {t['examples']:,} examples, full catalog of {m['catalog_items']:,} items:")
        print("    " + f"{'method':<12}" + "".join(f"{c:>11}" for c in cols))
        for name in ("popularity", "zero_shot", "fine_tuned"):
            print("    " + f"{name:<12}" + "".join(f"{t[name][c]:>11.4f}" for c in cols))


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Fine-tune the two-tower encoder on Ray Train.", "train_encoder.yaml", argv)
    return run_job("train_encoder", lambda: run(load_job_config(TrainEncoderConfig, args)))


if __name__ == "__main__":
    raise SystemExit(main())
