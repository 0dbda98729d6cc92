"""Item encoding: one padded batch per Ray batch against sub-batches of texts of similar length.

    python -m bench.item_batching [--items PARQUET ...] [--limit 2048] [--repeats 2]

The index job (and the evaluation's item encoding) hands each Ray Data batch of 256 item texts to
the encoder. Encoded as one batch, every text is padded to the longest one; on a CPU the job now
encodes it in sub-batches of `jobs.build_index.CPU_SUB_BATCH` texts sorted by length
(`features/models/encoder.py`'s `by_length`). For each items file (default: the bundled Online
Retail catalog, and Crowdflower's when `make evaluate-search` has imported it), the first `--limit`
item texts are encoded both ways in chunks of 256 with the zero-shot encoder on ONNX Runtime, one
thread, the two ways alternating `--repeats` times so drift hits both; reported: items/s of each,
the ratio, and the minimum cosine between the two ways' vectors. Writes
bench/results/item_batching.json with the commit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.feature_job import RESULTS, machine, write_result
from features.artifacts import git_commit
from features.data.text import item_text_expr
from features.data.validate import ValidationConfig, validate_items
from features.evaluation.splits import read_table
from features.models import onnx_encoder as OX
from features.models.encoder import ZERO_SHOT, EncoderConfig
from jobs.build_index import CPU_SUB_BATCH

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ITEMS = [ROOT / "data/canonical/online_retail/items.parquet", ROOT / "data/canonical/crowdflower_search/items.parquet"]
RAY_BATCH = 256  # jobs.build_index's encode_batch_size default


def encode(encoder, texts: list[str], sub_batch: int | None) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = np.concatenate([encoder.encode(texts[s:s + RAY_BATCH], tower="item",
                                         batch_size=sub_batch or len(texts[s:s + RAY_BATCH]))
                          for s in range(0, len(texts), RAY_BATCH)])
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", action="append", default=[], help="an items file (repeatable; default: see above)")
    ap.add_argument("--limit", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--out", default=str(RESULTS / "item_batching.json"))
    ns = ap.parse_args(argv)
    paths = [Path(p) for p in ns.items] or [p for p in DEFAULT_ITEMS if p.is_file()]
    if not paths:
        ap.error("no items file: give --items, or run `make data` first")
    with tempfile.TemporaryDirectory() as tmp:
        folder, _ = OX.export_spec(ZERO_SHOT, ns.artifacts, replace(EncoderConfig(), max_length=64), tmp)
        encoder = OX.OnnxEncoder(folder, 1)
        encoder.encode(["warm up"], tower="item")
        rows = {}
        for path in paths:
            items, _ = validate_items(read_table(str(path)), ValidationConfig())  # as jobs.evaluate reads items
            texts = items.with_columns(item_text_expr())["item_text"].to_list()[:ns.limit]
            secs = {"one padded batch of 256": [], f"sub-batches of {CPU_SUB_BATCH} by length": []}
            for _ in range(ns.repeats):
                whole, a = encode(encoder, texts, None)
                sorted_, b = encode(encoder, texts, CPU_SUB_BATCH)
                secs["one padded batch of 256"].append(a)
                secs[f"sub-batches of {CPU_SUB_BATCH} by length"].append(b)
            best = {k: min(v) for k, v in secs.items()}
            a, b = best.values()
            lengths = [len(t) for t in texts]
            rows[path.parent.name] = {
                "texts": len(texts), "chars_p50_p95": [int(np.percentile(lengths, 50)), int(np.percentile(lengths, 95))],
                "items_per_s": {k: round(len(texts) / v, 1) for k, v in best.items()}, "speedup": round(a / b, 2),
                "min_cosine": round(float((whole * sorted_).sum(1).min()), 6)}
            print(path.parent.name, rows[path.parent.name], flush=True)
    write_result(ns.out, {"bench": "item_batching", "commit": git_commit(), "machine": machine(),
                          "encoder": "zero-shot, ONNX Runtime float32, 1 thread, max_length 64", "data": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
