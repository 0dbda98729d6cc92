"""Encoder fine-tuning pieces that need no Ray: the pair model, schedule, freezing, checkpoints
with optimizer state (safetensors + JSON, no pickle), and full-catalog evaluation that can be
sharded over torch.distributed ranks.

jobs/train_encoder.py wires these into a Ray Train loop; tests use them directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import polars as pl
import torch
import torch.distributed as dist

from features import artifacts as A
from features import metrics as M
from features.data import schema as S
from features.models.encoder import TwoTowerEncoder
from features.models.losses import full_softmax, info_nce

TRAIN_STATE = "train_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
MODEL_SUBDIR = "encoder"


@dataclass(frozen=True)
class TrainParams:
    """Optimisation settings of the fine-tuning loop (per worker unless said otherwise)."""

    num_workers: int = 2  # Ray Train workers (DDP ranks)
    cpus_per_worker: int = 1  # also the torch threads of each worker
    use_gpu: bool = False  # one GPU per worker; bf16 autocast on GPU when amp is true
    amp: bool = True
    batch_size: int = 32  # per worker; in-batch negatives = batch_size - 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    max_steps: int = 300  # optimizer steps in total (the schedule decays to 10% of lr at the end)
    max_time_s: float = 420.0  # the loop ends where one more evaluation would take it past this (evaluations included)
    temperature: float = 0.05
    # "shared": both towers train (in-batch negatives); "frozen": the item tower keeps its
    # pretrained weights, the catalog is encoded once, and the query tower trains with a softmax
    # over the whole catalog (needs encoder.share_towers=false; the job sets it).
    item_tower: Literal["shared", "frozen"] = "shared"
    logq_correction: bool = True  # correct in-batch negatives for item popularity (see losses.info_nce)
    freeze_embeddings: bool = True  # the word embeddings are half of MiniLM's weights
    freeze_layers: int = 2  # also freeze the lowest N transformer layers
    eval_every_steps: int = 40
    eval_zero_shot: bool = True  # evaluate the starting model first (the zero-shot point of the curve)
    valid_examples: int = 1000  # sampled from the valid split (seeded); 0: all
    early_stopping_patience: int = 3  # evaluations without a better valid NDCG@10
    shuffle_buffer: int = 20_000  # rows in each worker's local shuffle buffer
    seed: int = 0


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, floor: float = 0.1) -> float:
    """Linear warmup to base_lr over warmup_steps, then linear decay to floor * base_lr."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    frac = min(1.0, (step - warmup_steps) / span)
    return base_lr * (1.0 - (1.0 - floor) * frac)


def freeze(encoder: TwoTowerEncoder, embeddings: bool, layers: int) -> int:
    """Freeze the word/position embeddings and/or the lowest `layers` transformer layers of both
    towers, and always the pooler head (mean pooling never uses it; DDP insists every trainable
    parameter gets a gradient). Returns the number of trainable parameters left."""
    for model in {id(m): m for m in (encoder.query_model, encoder.item_model)}.values():
        if getattr(model, "pooler", None) is not None:
            for p in model.pooler.parameters():
                p.requires_grad = False
        if embeddings and hasattr(model, "embeddings"):
            for p in model.embeddings.parameters():
                p.requires_grad = False
        blocks = getattr(getattr(model, "encoder", None), "layer", None)
        if layers:
            if blocks is None or layers > len(blocks):
                raise ValueError(f"train.freeze_layers={layers}, but the model has {0 if blocks is None else len(blocks)} layers")
            for block in blocks[:layers]:
                for p in block.parameters():
                    p.requires_grad = False
    return sum(p.numel() for p in encoder.parameters() if p.requires_grad)


def freeze_item_tower(encoder: TwoTowerEncoder) -> None:
    """Freeze every item-tower weight (the towers must not be shared)."""
    if encoder.item_model is encoder.query_model:
        raise ValueError("train.item_tower=frozen needs encoder.share_towers=false")
    for p in encoder.item_model.parameters():
        p.requires_grad = False


class PairModel(torch.nn.Module):
    """Both towers in one forward call, so DDP sees exactly one forward per backward."""

    def __init__(self, encoder: TwoTowerEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, q_ids, q_mask, i_ids=None, i_mask=None):  # -> (query_emb (B, d), item_emb (B, d) or None)
        q = self.encoder(q_ids, q_mask, "query")
        return q, (None if i_ids is None else self.encoder(i_ids, i_mask, "item"))


def pair_loss(model: torch.nn.Module, encoder: TwoTowerEncoder, anchors: Sequence[str], targets: Sequence[str],
              item_keys: torch.Tensor, query_keys: torch.Tensor, temperature: float,
              device: torch.device, item_log_q: torch.Tensor | None = None,
              catalog_emb: torch.Tensor | None = None) -> torch.Tensor:
    """Tokenise a batch of (anchor text, target item text) and return the InfoNCE loss; with
    catalog_emb (N, d) (a frozen item tower) the full-catalog softmax instead, where item_keys are
    the targets' catalog rows.

    Blank anchors never reach training (the job filters them): their zero vector has no gradient.
    """
    q = encoder.tokenize(anchors)
    if catalog_emb is not None:
        q_emb, _ = model(q["input_ids"].to(device), q["attention_mask"].to(device))
        return full_softmax(q_emb.float(), catalog_emb, item_keys.to(device), temperature)
    i = encoder.tokenize(targets)
    q_emb, i_emb = model(q["input_ids"].to(device), q["attention_mask"].to(device),
                         i["input_ids"].to(device), i["attention_mask"].to(device))
    return info_nce(q_emb.float(), i_emb.float(), temperature,
                    item_keys=item_keys.to(device), query_keys=query_keys.to(device),
                    item_log_q=None if item_log_q is None else item_log_q.to(device).float())


# --- checkpoints -------------------------------------------------------------------------------
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(directory: str | Path, encoder: TwoTowerEncoder, opt: torch.optim.Optimizer | None,
                    state: dict) -> Path:
    """A training checkpoint: encoder/ (a loadable encoder checkpoint), optimizer.safetensors and
    train_state.json (step, best metric, ... plus the optimizer's param groups)."""
    from safetensors.torch import save_file

    d = Path(directory)
    encoder.save(d / MODEL_SUBDIR)
    meta: dict = {}
    if opt is not None:
        tensors, meta = _optimizer_tensors(opt)
        save_file(tensors, str(d / OPTIMIZER_FILE))
    (d / TRAIN_STATE).write_text(json.dumps({"state": state, "optimizer": meta}, indent=2))
    return d


def load_checkpoint(directory: str | Path, opt: torch.optim.Optimizer | None, **overrides) -> tuple[TwoTowerEncoder, dict]:
    """Load a `save_checkpoint` folder: (encoder, state); the optimizer state goes into `opt`."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / TRAIN_STATE).is_file():
        raise FileNotFoundError(f"{d} is not a training checkpoint (no {TRAIN_STATE})")
    saved = json.loads((d / TRAIN_STATE).read_text())
    encoder = TwoTowerEncoder.load(d / MODEL_SUBDIR, **overrides)
    if opt is not None and (d / OPTIMIZER_FILE).is_file():
        flat = load_file(str(d / OPTIMIZER_FILE))
        state: dict = {}
        for key, v in flat.items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        for key, v in saved["optimizer"]["scalars"].items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        # JSON turned tuples (betas) into lists; give them back their type.
        groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
                  for g in saved["optimizer"]["param_groups"]]
        opt.load_state_dict({"state": state, "param_groups": groups})
    return encoder, saved["state"]


def restore_into(encoder: TwoTowerEncoder, directory: str | Path, opt: torch.optim.Optimizer | None) -> dict:
    """Copy a training checkpoint's weights into an existing encoder (and optimizer); -> state."""
    loaded, state = load_checkpoint(directory, opt)
    encoder.load_state_dict(loaded.state_dict())
    return state


# --- evaluation data ---------------------------------------------------------------------------
def catalog_frame(features_dir: str) -> pl.DataFrame:
    """(row, item_id, item_text) of a features version, rows numbered in item_id order."""
    items = A.read_parquet(A.join(features_dir, "items"), columns=[S.ITEM_ID, S.ITEM_TEXT])
    return items.sort(S.ITEM_ID).with_row_index("row")


def target_log_q(features_dir: str, catalog: pl.DataFrame, kinds: Sequence[str]) -> pl.DataFrame:
    """catalog plus `log_q`: log of each item's share of the train split's targets (items never
    a target get half a count, so the log stays finite)."""
    train = A.read_parquet(A.join(features_dir, "examples", S.Split.TRAIN.value), columns=[S.EXAMPLE_KIND, S.TARGET_ITEM_ID])
    counts = (train.filter(pl.col(S.EXAMPLE_KIND).is_in(list(kinds))).group_by(S.TARGET_ITEM_ID).len()
              .rename({S.TARGET_ITEM_ID: S.ITEM_ID, "len": "__n"}))
    out = catalog.join(counts, on=S.ITEM_ID, how="left", maintain_order="left")
    n = out["__n"].fill_null(0).cast(pl.Float64)
    total = max(float(n.sum()), 1.0)
    return out.with_columns((n.clip(lower_bound=0.5) / total).log().alias("log_q"), n.alias("target_count")).drop("__n")


def eval_sample(features_dir: str, split: str, catalog: pl.DataFrame, kinds: Sequence[str], n: int,
                seed: int) -> tuple[list[str], np.ndarray]:
    """(anchors, target rows in `catalog`) of a seeded sample of one split's examples; n = 0: all.
    A target missing from the catalog gets metrics.MISSING (scored as a miss, never dropped)."""
    df = A.read_parquet(A.join(features_dir, "examples", split), columns=[S.EXAMPLE_KIND, S.ANCHOR_TEXT, S.TARGET_ITEM_ID])
    df = df.filter(pl.col(S.EXAMPLE_KIND).is_in(list(kinds))).sort(S.TARGET_ITEM_ID, S.ANCHOR_TEXT)
    if n and df.height > n:
        df = df.sample(n, seed=seed)
    df = df.join(catalog, left_on=S.TARGET_ITEM_ID, right_on=S.ITEM_ID, how="left", maintain_order="left")
    return df[S.ANCHOR_TEXT].to_list(), df["row"].fill_null(M.MISSING).to_numpy().astype(np.int64)


# --- evaluation --------------------------------------------------------------------------------
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def comm_device(encoder: TwoTowerEncoder) -> torch.device:
    """Where tensors for a collective must live: the model's GPU under NCCL, else the CPU (gloo)."""
    return next(encoder.parameters()).device if dist.get_backend() == "nccl" else torch.device("cpu")


def _shard(n: int, rank: int, world: int) -> tuple[int, int, int]:
    per = math.ceil(n / world) if n else 0
    lo = min(n, rank * per)
    return lo, min(n, lo + per), per


def encode_catalog(encoder: TwoTowerEncoder, item_texts: Sequence[str | None], batch_size: int = 128) -> np.ndarray:
    """Item embeddings (N, d) float32; with torch.distributed each rank encodes 1/world of the
    catalog and the slices are gathered, so every rank returns the whole matrix."""
    rank, world = _world()
    n = len(item_texts)
    if world == 1:
        return encoder.encode(list(item_texts), tower="item", batch_size=batch_size)
    lo, hi, per = _shard(n, rank, world)
    part = encoder.encode(list(item_texts[lo:hi]), tower="item", batch_size=batch_size)
    padded = torch.zeros(per, encoder.dim)
    padded[: hi - lo] = torch.from_numpy(part)
    padded = padded.to(comm_device(encoder))
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat(parts).cpu().numpy()[:n]


def evaluate(encoder: TwoTowerEncoder, item_texts: Sequence[str | None], anchors: Sequence[str | None],
             target_idx: np.ndarray, ks: Sequence[int] = (10,), batch_size: int = 128,
             item_emb: np.ndarray | None = None) -> dict[str, float]:
    """Recall@k / NDCG@k / MRR of ranking the whole catalog for each anchor (single target).

    item_emb (N, d): the catalog's vectors when already known (a frozen item tower); else encoded.
    Sharded over torch.distributed ranks when initialised (every rank gets the same result).
    """
    return evaluate_with_ranks(encoder, item_texts, anchors, target_idx, ks, batch_size, item_emb)[0]


def evaluate_with_ranks(encoder: TwoTowerEncoder, item_texts: Sequence[str | None], anchors: Sequence[str | None],
                        target_idx: np.ndarray, ks: Sequence[int] = (10,), batch_size: int = 128,
                        item_emb: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """`evaluate`, and every anchor's 0-based full-catalog target rank (gathered from all ranks), so a
    later comparison of two models on these anchors needs no second pass over the catalog."""
    rank, world = _world()
    if item_emb is None:
        item_emb = encode_catalog(encoder, item_texts, batch_size)
    n = len(anchors)
    lo, hi, per = _shard(n, rank, world)
    q = encoder.encode(list(anchors[lo:hi]), tower="query", batch_size=batch_size)
    ranks = M.ranks_by_inner_product(q, item_emb, target_idx[lo:hi])
    sums = M.rank_sums(ranks, ks)
    if world > 1:
        keys = sorted(sums)
        t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=comm_device(encoder))
        dist.all_reduce(t)
        sums = dict(zip(keys, t.cpu().tolist()))
        padded = torch.full((per,), -1, dtype=torch.int64)
        padded[: hi - lo] = torch.from_numpy(np.asarray(ranks, np.int64))
        padded = padded.to(comm_device(encoder))
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        sizes = [b - a for a, b, _ in (_shard(n, r, world) for r in range(world))]  # each rank's share, unpadded
        ranks = np.concatenate([p.cpu().numpy()[:size] for p, size in zip(parts, sizes)])
    return M.means(sums), np.asarray(ranks, np.int64)


def example_ranks(encoder: TwoTowerEncoder, item_texts: Sequence[str | None], anchors: Sequence[str | None],
                  target_idx: np.ndarray, batch_size: int = 128, item_emb: np.ndarray | None = None) -> np.ndarray:
    """The 0-based full-catalog rank of each anchor's target (one process; no sharding)."""
    if item_emb is None:
        item_emb = encoder.encode(list(item_texts), tower="item", batch_size=batch_size)
    q = encoder.encode(list(anchors), tower="query", batch_size=batch_size)
    return M.ranks_by_inner_product(q, item_emb, np.asarray(target_idx))


def versus_base(candidate_ranks: np.ndarray, base_ranks: np.ndarray, k: int = 10, seed: int = 0) -> dict:
    """A fine-tune against the model it started from, on the same valid examples: mean NDCG@k of
    each, the paired difference with its 95% bootstrap interval (over examples), and `beats`, true
    only where that interval lies above 0 (the house rule for "beats"; a difference inside the noise
    keeps the model that needs no training)."""
    cand, base = M.ndcg_gains(candidate_ranks, k), M.ndcg_gains(base_ranks, k)
    if cand.shape != base.shape:
        raise ValueError(f"{cand.shape[0]} candidate ranks but {base.shape[0]} base ranks: compare the same examples")
    lo, hi = M.bootstrap_ci(cand - base, seed=seed)
    diff = float((cand - base).mean()) if len(cand) else 0.0
    return {"metric": f"ndcg@{k}", "examples": int(len(cand)), "fine_tuned": round(float(cand.mean()), 6) if len(cand) else 0.0,
            "zero_shot": round(float(base.mean()), 6) if len(base) else 0.0, "paired_difference": round(diff, 6),
            "paired_difference_ci95": [round(lo, 6), round(hi, 6)], "beats": bool(len(cand) and lo > 0)}
