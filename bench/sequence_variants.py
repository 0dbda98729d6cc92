"""Does text help the behaviour model? Validation NDCG@10 of model variants, no test request read.

    python -m bench.sequence_variants [--splits time,leave-last] [--variants default,sasrec,...]
                                      [--events data/canonical/online_retail/events.parquet]
    # -> bench/results/sequence_variants.json

For each split, the training part `jobs.evaluate` gives its test stage (time: the events before
2011-11-09, the bundled log's default split; leave-last: each shopper's events before their last
interaction), the item text vectors of the newest index under --artifacts, and the behaviour
model's own validation (each of 3,000 sampled shoppers' last new item, features/models/sequence.py
`split_valid`). Each variant trains to its early stop (patience 3) in this process, 2 threads, and
reports its best validation NDCG@10, epochs and seconds. Variants:
- default: the behaviour model as shipped (linear text adapter + item ID + event/time inputs);
- sasrec: the ID-only SASRec baseline of the evaluation (no text, no event/time inputs);
- wide, sasrec-wide: both at width 128 instead of 64;
- mlp-adapter: the text adapter as a 2-layer MLP (384 -> 256 -> GELU -> 64) instead of linear;
- id-dropout: during training each item's ID vector is dropped (text only) with probability 0.3,
  for input and output items alike, so the model must lean on text;
- text-only: no ID vectors at all (every item scored by its text, as a new item is);
- lr-2x, batch-2x: the shipped model with twice the learning rate, and with twice the batch at twice
  the rate: can it reach its early stop in fewer epochs or seconds at the same validation NDCG?
- explore, sasrec-explore: both models with the loss only on targets new to the shopper (an item
  they had earlier in their sequence is not a target), as the evaluation and serving only ask for
  new items; the default trains on every next item, re-orders included.
The mlp-adapter, id-dropout and explore variants exist only here: the first two are what was tried
to make text help, the third to aim training at new items, and none did (docs/evaluation.md), so
the model does not carry them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import time
from typing import Any

from bench.feature_job import RESULTS, machine, write_result
from features.artifacts import git_commit

SPLITS = {"time": "time:2011-11-09T00:00:00Z", "leave-last": "leave-last"}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "sasrec": {"text": False, "events": False},
    "wide": {"dim": 128},
    "sasrec-wide": {"text": False, "events": False, "dim": 128},
    "mlp-adapter": {"mlp": 256},
    "id-dropout": {"id_drop": 0.3},
    "text-only": {"ids": False},
    "lr-2x": {"lr": 1e-2},
    "batch-2x": {"batch_size": 256, "lr": 1e-2},
    "explore": {"explore": True},
    "sasrec-explore": {"text": False, "events": False, "explore": True},
}


def explore_windows(windows):
    """`windows` with every target the shopper already had earlier in their sequence set to
    padding, so the loss is only on new items (what the evaluation and serving ask for: bought
    items are excluded)."""
    def wrapped(seqs, L):
        ids, types, gaps, y = windows(seqs, L)
        w = 0
        for s in seqs:  # the same walk as `windows`: chunks of L + 1 items from the sequence's end
            first = {}
            for j, r in enumerate(s.rows):
                first.setdefault(r, j)
            end = len(s.rows)
            while end >= 2:
                lo = max(0, end - L - 1)
                n = end - 1 - lo
                for k, j in enumerate(range(lo + 1, end)):
                    if first[s.rows[j]] < j:
                        y[w, L - n + k] = 0
                w += 1
                end -= L
        assert w == len(y)
        return ids, types, gaps, y
    return wrapped


def _model_class():
    import torch

    from features.models import sequence as SQ

    class Variant(SQ.SequenceModel):
        """The behaviour model with an MLP text adapter and/or ID-vector dropout in training."""

        def __init__(self, n_items: int, text_dim: int, p: SQ.SequenceParams, text_vectors, mlp: int = 0,
                     id_drop: float = 0.0) -> None:
            super().__init__(n_items, text_dim, p, text_vectors)
            self.id_drop = id_drop
            if mlp and self.adapter is not None:
                self.adapter = torch.nn.Sequential(torch.nn.Linear(text_dim, mlp), torch.nn.GELU(),
                                                   torch.nn.Linear(mlp, p.dim))

        def items(self, text_vectors=None, id_rows=None):
            E = super().items(text_vectors, id_rows)
            if self.training and self.id_drop and self.item_id is not None and self.adapter is not None \
                    and id_rows is None and text_vectors is None:
                text = self.adapter(self.text_vectors)
                keep = (torch.rand(E.shape[0], 1, device=E.device) >= self.id_drop).to(E.dtype)
                E = text + (E - text) * keep
            return E

    return Variant


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", default="data/canonical/online_retail/events.parquet")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--splits", default=",".join(SPLITS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "sequence_variants.json"))
    ns = ap.parse_args(argv)
    splits = [s for s in ns.splits.split(",") if s]
    variants = [v for v in ns.variants.split(",") if v]
    for name, allowed, given in (("--splits", SPLITS, splits), ("--variants", VARIANTS, variants)):
        bad = sorted(set(given) - set(allowed))
        if bad or not given:
            ap.error(f"{name}: unknown or empty {bad}; allowed: {', '.join(allowed)}")

    import torch

    from features import artifacts as A
    from features.evaluation import splits as ES
    from features.models import sequence as SQ
    from features.retrieval.index import ItemIndex

    index_dir = A.latest_complete(ns.artifacts, "index")
    if index_dir is None:
        ap.error(f"no complete index under {ns.artifacts}/index: run `make index` (or `make demo`) first")
    index = ItemIndex.load(A.local_copy(index_dir))
    vectors = index.vectors()
    row = {i: n for n, i in enumerate(index.item_ids)}
    events = A.read_parquet(ns.events)
    Variant = _model_class()
    torch.set_num_threads(ns.threads)
    results: dict[str, dict] = {}
    for split in splits:
        spec = ES.SplitSpec.parse(SPLITS[split])
        train_events = ES.plan_split(events, spec).train_events
        seqs = SQ.sequences(train_events, row)
        results[split] = {}
        for name in variants:
            v = dict(VARIANTS[name])
            extra = {"mlp": v.pop("mlp", 0), "id_drop": v.pop("id_drop", 0.0)}
            explore = v.pop("explore", False)
            p = dataclasses.replace(SQ.SequenceParams(), **v)
            train, hist, targets = SQ.split_valid(seqs, p, True)
            torch.manual_seed(p.seed)
            model = Variant(len(vectors), vectors.shape[1], p, vectors, **extra)
            t0 = time.perf_counter()
            plain = SQ.windows
            SQ.windows = explore_windows(plain) if explore else plain
            try:
                st = SQ.fit(model, train, hist, targets, True, log=None)
            finally:
                SQ.windows = plain
            r = {"valid_ndcg@10": round(st["best"], 4), "best_epoch": st["best_epoch"], "epochs": st["epoch"],
                 "stopped_by": st["stopped_by"], "seconds": round(time.perf_counter() - t0, 1),
                 "valid_users": int(len(targets)),
                 "params": {**v, **{k: x for k, x in extra.items() if x}, **({"explore": True} if explore else {})}}
            results[split][name] = r
            print(f"{split:<11}{name:<15}valid NDCG@10 {r['valid_ndcg@10']:.4f}  best epoch {r['best_epoch']} of "
                  f"{r['epochs']}  {r['seconds']:.0f} s", flush=True)
        base = results[split].get("sasrec", {}).get("valid_ndcg@10")
        if base:
            for r in results[split].values():
                r["vs_sasrec"] = round(r["valid_ndcg@10"] / base - 1, 4)
    out = {"benchmark": "sequence_variants", "commit": git_commit(), "machine": machine(),
           "index": str(index_dir), "events": ns.events, "threads": ns.threads,
           "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "results": results}
    write_result(ns.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
