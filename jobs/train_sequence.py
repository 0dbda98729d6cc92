"""Train the behaviour model (features/models/sequence.py) with Ray Train.

    python -m jobs.train_sequence [--config jobs/configs/train_sequence.yaml] [--set key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.train_sequence ...

Steps: read the canonical events (before `until`), map items to an index version's catalog (its
vectors are the frozen text encoder's: the adapter's input), build each shopper's sequence, hold
out each sampled shopper's last new item for validation -> TorchTrainer (DDP over num_workers, CPU
or GPU) trains until validation NDCG@10 stops improving (patience), reporting a checkpoint every
epoch -> the best weights go to <output_root>/sequence/<version>/model.pt with manifest.json.

Resume: a run is kept under <output_root>/train_runs/<run_name>; re-running with
`--set run_name=<name>` continues from its last checkpoint (weights, optimizer, epoch, best).
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from dataclasses import dataclass, field
from typing import Literal

import polars as pl

from features import artifacts as A
from features.config import ConfigError, to_dict
from features.data import schema as S
from features.models import sequence as SQ
from features.models.sequence_io import MODEL_FILE, load_state, save_model, save_state
from features.retrieval.index import ItemIndex
from jobs.common import (
    RayConfig,
    Steps,
    check_fits,
    free_cpus_per_worker,
    init_ray,
    load_job_config,
    parse_args,
    run_job,
    train_failure_config,
    train_run_dir,
)

KIND = "sequence"


@dataclass(frozen=True)
class TrainSequenceConfig:
    events: str = "data/canonical/online_retail/events.parquet"  # canonical events (file, folder or URI)
    index: str | None = None  # index version whose vectors feed the text adapter; null: newest under output_root
    until: str | None = None  # ISO instant: events at or after it are ignored (a time split's test part)
    exclude_history: bool = True  # validation targets are items the shopper had not bought, as recommend excludes
    output_root: str = "artifacts"
    run_name: str | None = None  # Ray Train run; an existing name resumes from its last checkpoint
    model: SQ.SequenceParams = field(default_factory=SQ.SequenceParams)
    num_workers: int = 1
    cpus_per_worker: int = 2
    use_gpu: bool = False
    # ray: the Ray Train job (DDP, checkpoints, resume); local: the same training loop in this
    # process (no checkpoints; quick runs and tests on one machine)
    trainer: Literal["ray", "local"] = "ray"
    ray: RayConfig = field(default_factory=RayConfig)


def check_config(cfg: TrainSequenceConfig) -> None:
    for name in ("num_workers", "cpus_per_worker"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.trainer == "ray":
        check_fits(cfg.ray, cfg.num_workers * cfg.cpus_per_worker, cfg.num_workers * int(cfg.use_gpu),
                   "num_workers x cpus_per_worker (and use_gpu)")
    if cfg.until is not None:
        _instant(cfg.until)


def _instant(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ConfigError(f"until: not an ISO instant ({text!r}), e.g. 2011-11-09T00:00:00Z") from e
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


# --- the Ray Train loop -------------------------------------------------------------------------
def train_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    p: SQ.SequenceParams = config["params"]
    torch.set_num_threads(config["threads"])
    torch.manual_seed(p.seed)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    train, hist, targets, vectors = ray.get(config["data_ref"])
    model = SQ.SequenceModel(len(vectors), vectors.shape[1], p, vectors)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr, betas=(0.9, 0.98))
    state = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_state(d, model, opt)
        if rank == 0:
            print(f"resumed after epoch {state['epoch']} (best valid NDCG@10 {state['best']})", flush=True)
    step_model = ray.train.torch.prepare_model(model)
    base = step_model.module if hasattr(step_model, "module") else step_model

    def agree(flag: bool) -> bool:
        if world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def on_epoch(m: dict, st: dict) -> None:
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_state(tmp, base, opt, st)
                ray.train.report(m, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(m)

    st = SQ.fit(base, train, hist, targets, config["exclude_history"], rank=rank, world=world, agree=agree,
                on_epoch=on_epoch, state=state, opt=opt, step_model=step_model)
    final = {"epoch": st["epoch"], "final": 1, "valid_ndcg@10": st["best"], "train_s": st["train_s"]}
    if rank == 0:  # the best weights, and the run's story, as the last checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            save_state(tmp, base, opt, st | {"best_state": None})
            ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(final)


def _fit_on_ray_train(cfg: TrainSequenceConfig, run_name: str, data: tuple, steps: Steps) -> tuple:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    p = cfg.model
    vectors = data[3]
    storage, resumed = train_run_dir(cfg.output_root, run_name)
    cpus = free_cpus_per_worker(cfg.num_workers, cfg.cpus_per_worker, "train_sequence")
    steps(f"train on Ray Train: {cfg.num_workers} worker(s) x {cpus} CPU"
          f"{' + 1 GPU' if cfg.use_gpu else ''}, run {run_name}{' (resuming)' if resumed else ''}")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"params": p, "threads": cpus, "exclude_history": cfg.exclude_history,
                           "data_ref": ray.put(data)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cpus}
                                               | ({"GPU": 1} if cfg.use_gpu else {})),
        run_config=ray.train.RunConfig(name=run_name, storage_path=storage, failure_config=train_failure_config(),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} reported no checkpoint")
    model = SQ.SequenceModel(len(vectors), vectors.shape[1], p)
    with result.checkpoint.as_directory() as d:
        st = load_state(d, model)  # the final checkpoint holds the best epoch's weights
    return model, st


# --- driver -------------------------------------------------------------------------------------
def run(cfg: TrainSequenceConfig) -> str:
    """Train and export; returns the version folder."""
    check_config(cfg)
    p = cfg.model
    steps = Steps("train_sequence")
    index_dir = cfg.index or A.latest_complete(cfg.output_root, "index")
    if index_dir is None:
        raise FileNotFoundError(f"no complete index version under {cfg.output_root}/index; run jobs.build_index first")
    steps(f"read events and the item vectors of {index_dir}; build sequences")
    index = ItemIndex.load(A.local_copy(index_dir))
    vectors = index.vectors()
    row = {i: n for n, i in enumerate(index.item_ids)}
    events = A.read_parquet(cfg.events)
    missing = [c for c in (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.TS, S.EVENT_ID) if c not in events.columns]
    if missing:
        raise ValueError(f"events {cfg.events}: missing column(s) {missing}; see docs/data.md for the canonical schema")
    if cfg.until is not None:
        events = events.filter(pl.col(S.TS) < _instant(cfg.until))
    seqs = SQ.sequences(events, row)
    train, hist, targets = SQ.split_valid(seqs, p, cfg.exclude_history)
    n_pos = sum(len(s.rows) for s in train)
    if not len(targets):
        raise ValueError("no shopper has two or more items (the last one not bought before) to validate a next-item model on")
    if not any(len(s.rows) >= 2 for s in train):  # said here, before Ray Train's workers start and fail on it
        raise ValueError(f"no shopper has two or more items to learn a next item from once each validation shopper's "
                         f"last item is held out ({len(seqs):,} shoppers, {n_pos:,} interactions): too small a log")
    print(f"  {len(seqs):,} shoppers, {n_pos:,} interactions, {len(index.item_ids):,} catalog items, "
          f"{len(targets):,} validation shoppers; model: text={p.text} ids={p.ids} events={p.events} dim={p.dim} "
          f"layers={p.layers} max_len={p.max_len}", flush=True)

    run_name = cfg.run_name or f"sequence-{A.new_version()}"
    t0 = time.perf_counter()
    if cfg.trainer == "local":
        import torch

        steps(f"train in this process ({cfg.cpus_per_worker} threads; trainer=local)")
        torch.manual_seed(p.seed)
        torch.set_num_threads(cfg.cpus_per_worker)
        model = SQ.SequenceModel(len(vectors), vectors.shape[1], p, vectors)
        st = SQ.fit(model, train, hist, targets, cfg.exclude_history)
        run_name = None
    else:
        init_ray(cfg.ray)  # after the checks: a log too small to train on says so before any worker starts
        model, st = _fit_on_ray_train(cfg, run_name, (train, hist, targets, vectors), steps)
    fit_s = time.perf_counter() - t0

    version = A.new_version()
    out_dir = A.join(cfg.output_root, KIND, version)
    steps(f"export the best epoch ({st['best_epoch']} of {st['epoch']}) to {out_dir}")
    with A.staged(out_dir) as local:
        save_model(local, model, index.item_ids, vectors.shape[1])
    metrics = {"users": len(seqs), "interactions": n_pos, "catalog_items": len(index.item_ids),
               "valid_users": int(len(targets)), "windows": st.get("windows"), "epochs": st["epoch"],
               "best_epoch": st["best_epoch"], "stopped_by": st.get("stopped_by"), "valid_ndcg@10": st["best"],
               "curve": st["curve"], "train_s": round(st["train_s"], 1), "fit_s": round(fit_s, 1),
               "device": "gpu" if cfg.use_gpu else "cpu", "num_workers": cfg.num_workers}
    idx_manifest = A.read_manifest(index_dir)
    A.write_manifest(out_dir, A.manifest(
        KIND, version, to_dict(cfg) | {"run_name": run_name},
        inputs={"events": {"path": cfg.events, "until": cfg.until},
                "index": {"path": str(index_dir), "version": idx_manifest.get("version"),
                          "encoder": (idx_manifest.get("config") or {}).get("encoder")}},
        outputs={"model": MODEL_FILE, "dim": p.dim}, metrics=metrics))
    steps("done")
    print(f"sequence -> {out_dir}" + (f"   (run {run_name}; resume with --set run_name={run_name})" if run_name else "") + "\n"
          f"  best valid NDCG@10 {st['best']:.4f} at epoch {st['best_epoch']} of {st['epoch']} "
          f"(stopped by {st.get('stopped_by')}); train {st['train_s']:.0f}s on {cfg.num_workers} "
          f"{'gpu' if cfg.use_gpu else 'cpu'} worker(s)", flush=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Train the behaviour (sequence) model on Ray Train.", "train_sequence.yaml", argv)

    def body() -> int:
        run(load_job_config(TrainSequenceConfig, args))
        return 0

    return run_job("train_sequence", body)


if __name__ == "__main__":
    raise SystemExit(main())
