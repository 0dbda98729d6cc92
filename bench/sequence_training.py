"""What a behaviour-model training step costs, as the model is built now and as it was before one change.

    python -m bench.sequence_training [--baseline autograd_softmax|torch_dropout|index_rows]
                                      [--events data/canonical/online_retail/events.parquet]
                                      [--steps 8] [--repeats 6]
    # -> bench/results/sequence_training_softmax.json (autograd_softmax, the default)
    #    bench/results/sequence_training.json (torch_dropout)
    #    bench/results/sequence_training_rows.json (index_rows)

Builds the training windows `jobs.train_sequence` builds from a canonical events file (the
bundled Online Retail log by default; `make data` writes it) and times full training steps
(forward, full-catalog softmax loss, backward, Adam) of the default model, twice: once as the
model is built now, and once with one change undone:
- `autograd_softmax`: the full-catalog loss as autograd's cross_entropy over 2,048-row chunks of
  logits (what the model used before `features.models.losses.full_softmax_ce`, which computes the
  same loss and gradients in one pass over a reused workspace);
- `torch_dropout`: every dropout torch's `nn.Dropout` (before `features/models/dropout.py`);
- `index_rows`: the batch's item rows gathered by indexing, E[rows] (before
  `features.models.sequence.item_rows`, an embedding lookup whose backward is deterministic).
The two models share parameters' shapes and data; their steps are interleaved (A, B, A, B ...)
so drift in the box's speed hits both, and the first repeat is dropped as warm-up. The item text
vectors are random unit vectors of the encoder's width: a step's cost does not depend on their
values. Threads: as the training job on 2 CPUs (2).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from features.artifacts import git_commit

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", choices=("autograd_softmax", "torch_dropout", "index_rows"), default="autograd_softmax",
                    help="the change to undo in the model timed against the current one")
    ap.add_argument("--events", default="data/canonical/online_retail/events.parquet")
    ap.add_argument("--steps", type=int, default=8, help="training steps per timed block")
    ap.add_argument("--repeats", type=int, default=6, help="blocks per variant (the first is warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text-dim", type=int, default=384)
    ap.add_argument("--out", default=None, help="default: bench/results/sequence_training[_softmax].json")
    ns = ap.parse_args(argv)
    if ns.steps < 1 or ns.repeats < 2:
        raise SystemExit("--steps must be >= 1 and --repeats >= 2 (the first repeat is warm-up)")
    if not Path(ns.events).exists():
        raise SystemExit(f"{ns.events} not found; run make data (or pass --events a canonical events file)")

    import polars as pl
    import torch

    from features.data import schema as S
    from features.models import sequence as SQ

    events = pl.read_parquet(ns.events)
    item_ids = events.filter(pl.col(S.ITEM_ID).is_not_null())[S.ITEM_ID].unique().sort().to_list()
    row = {i: n for n, i in enumerate(item_ids)}
    p = SQ.SequenceParams()
    train, _, _ = SQ.split_valid(SQ.sequences(events, row), p, exclude_history=True)
    ids, types, gaps, y = SQ.windows(train, p.max_len)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(item_ids), ns.text_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    torch.set_num_threads(ns.threads)
    torch.manual_seed(0)

    fused, lookup = SQ.full_softmax_ce, SQ.item_rows

    def autograd_softmax(h, E, y):  # the loss as the model computed it before full_softmax_ce
        total = 0.0
        for lo in range(0, len(h), 2048):
            total = total + torch.nn.functional.cross_entropy(h[lo:lo + 2048] @ E.T, y[lo:lo + 2048], reduction="sum")
        return total / max(len(h), 1)

    def build(variant: str):
        m = SQ.SequenceModel(len(item_ids), ns.text_dim, p, vectors)
        if variant == "torch_dropout":
            for block in m.blocks.layers:
                attn = torch.nn.MultiheadAttention(p.dim, p.heads, dropout=p.dropout, batch_first=True)
                attn.load_state_dict(block.self_attn.state_dict())
                block.self_attn = attn
                block.dropout, block.dropout1, block.dropout2 = (torch.nn.Dropout(p.dropout) for _ in range(3))
            m.drop = torch.nn.Dropout(p.dropout)
        return m, torch.optim.Adam(m.parameters(), lr=p.lr, betas=(0.9, 0.98))

    current = {"autograd_softmax": "fused_softmax", "torch_dropout": "byte_dropout",
               "index_rows": "embedding_rows"}[ns.baseline]
    variants = {v: build(v) for v in (ns.baseline, current)}
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    order = rng.permutation(len(ids))
    for rep in range(ns.repeats):
        for v, (model, opt) in (variants.items() if rep % 2 == 0 else reversed(variants.items())):
            model.train()
            SQ.full_softmax_ce = autograd_softmax if v == "autograd_softmax" else fused  # what forward() calls
            SQ.item_rows = (lambda E, rows: E[rows]) if v == "index_rows" else lookup
            t0 = time.perf_counter()
            for s in range(ns.steps):
                b = order[(rep * ns.steps + s) * p.batch_size % len(ids):][:p.batch_size]
                loss = model(*(torch.from_numpy(a[b]) for a in (ids, types, gaps, y)), None, None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            seconds[v].append((time.perf_counter() - t0) / ns.steps)
        print(f"repeat {rep + 1}/{ns.repeats}: " + ", ".join(f"{v} {seconds[v][-1] * 1e3:.0f} ms/step" for v in seconds), flush=True)

    steps_per_epoch = int(np.ceil(len(ids) / p.batch_size))
    med = {v: float(np.median(s[1:])) for v, s in seconds.items()}
    out = {
        "benchmark": "sequence_training", "commit": git_commit(), "baseline": ns.baseline, "current": current,
        "events": ns.events,
        "machine": platform.machine(), "threads": ns.threads, "windows": int(len(ids)),
        "items": len(item_ids), "steps_per_epoch": steps_per_epoch, "steps": ns.steps, "repeats": ns.repeats,
        "ms_per_step": {v: {"median": round(m * 1e3, 1), "all": [round(s * 1e3, 1) for s in seconds[v]]}
                        for v, m in med.items()},
        "epoch_s_estimate": {v: round(m * steps_per_epoch, 1) for v, m in med.items()},
        "speedup": round(med[ns.baseline] / med[current], 3),
    }
    out_path = Path(ns.out or RESULTS / {"torch_dropout": "sequence_training.json",
                                         "autograd_softmax": "sequence_training_softmax.json",
                                         "index_rows": "sequence_training_rows.json"}[ns.baseline])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("ms_per_step", "epoch_s_estimate", "speedup")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
