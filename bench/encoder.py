"""Benchmark: catalog encoding throughput, single-request encode latency, and what int8 costs.

    python -m bench.encoder [--encoder latest|zero-shot|PATH] [--valid 1000] [--requests 200]

In one run, on one machine, for the float32 encoder and its dynamically quantised int8 twin
(features.encoder.quantize_int8):
  - catalog throughput: every item text of the newest features version, batch 128, 2 threads
    (the build_index job's work), items/s;
  - latency of one request, 1 thread (a serving replica's share): a search query (a catalog title
    in lower case) and a history text (a real valid-split anchor), p50/p99 ms over --requests;
  - quality: Recall@10 / NDCG@10 on a seeded valid-split sample against the full catalog.
The int8 option is worth offering if it is >= 1.5x faster and loses < 1% of Recall@10 (relative).
Writes bench/results/encoder.json.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench.feature_job import RESULTS, machine
from features import artifacts as A
from features.artifacts import git_commit
from features.data import schema as S
from features.models import training as TR
from features.models.encoder import LATEST, ZERO_SHOT, EncoderConfig, TwoTowerEncoder, load_encoder, quantize_int8


def _latency_ms(encoder: TwoTowerEncoder, texts: list[str]) -> dict:
    torch.set_num_threads(1)
    encoder.encode(texts[:5])  # warm-up
    times = []
    for t in texts:
        t0 = time.perf_counter()
        encoder.encode([t])
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(np.mean(times)), "n": len(times)}


def _throughput(encoder: TwoTowerEncoder, texts: list[str], threads: int) -> dict:
    torch.set_num_threads(threads)
    encoder.encode(texts[:128], tower="item", batch_size=128)
    t0 = time.perf_counter()
    encoder.encode(texts, tower="item", batch_size=128)
    s = time.perf_counter() - t0
    return {"items": len(texts), "seconds": s, "items_per_s": len(texts) / s, "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default=LATEST, help="latest | zero-shot | a checkpoint folder (default: latest, "
                                                       "else zero-shot)")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--valid", type=int, default=1000, help="valid-split examples for the quality check")
    ap.add_argument("--requests", type=int, default=200, help="single requests per latency measurement")
    a = ap.parse_args()

    features_dir = A.latest_complete(a.artifacts, "features")
    if features_dir is None:
        raise SystemExit(f"no features version under {a.artifacts}; run `make features` first")
    spec = a.encoder
    if spec == LATEST and A.latest_complete(a.artifacts, "encoder") is None:
        print("no trained encoder found; benchmarking the zero-shot model", flush=True)
        spec = ZERO_SHOT
    catalog = TR.catalog_frame(features_dir)
    item_texts = catalog[S.ITEM_TEXT].to_list()
    anchors, targets = TR.eval_sample(features_dir, S.Split.VALID.value, catalog, [k.value for k in S.ExampleKind],
                                      a.valid, seed=0)
    rng = np.random.default_rng(0)
    queries = [item_texts[i].split(" | ")[0].lower() for i in rng.integers(0, len(item_texts), a.requests)]
    histories = [anchors[i] for i in rng.integers(0, len(anchors), a.requests)]

    fp32, path = load_encoder(spec, a.artifacts, EncoderConfig())
    print(f"encoder: {path or 'zero-shot'} (max_length {fp32.cfg.max_length}); {len(item_texts):,} items; "
          f"{len(anchors):,} valid examples; machine: {machine()}", flush=True)
    int8, _ = load_encoder(spec, a.artifacts, EncoderConfig())
    quantize_int8(int8)
    rows = {}
    for name, enc in (("float32", fp32), ("int8", int8)):
        row = {"catalog": _throughput(enc, item_texts, threads=2)}
        row["latency_query"] = _latency_ms(enc, queries)
        row["latency_history"] = _latency_ms(enc, histories)
        torch.set_num_threads(2)
        row["quality"] = TR.evaluate(enc, item_texts, anchors, targets, ks=(10,))
        rows[name] = row
        print(f"  {name:<8} catalog {row['catalog']['items_per_s']:7.0f} items/s | query p50 "
              f"{row['latency_query']['p50_ms']:6.1f} p99 {row['latency_query']['p99_ms']:6.1f} ms | history p50 "
              f"{row['latency_history']['p50_ms']:6.1f} p99 {row['latency_history']['p99_ms']:6.1f} ms | "
              f"Recall@10 {row['quality']['recall@10']:.4f} NDCG@10 {row['quality']['ndcg@10']:.4f}", flush=True)
    f, q = rows["float32"], rows["int8"]
    speedup = q["catalog"]["items_per_s"] / f["catalog"]["items_per_s"]
    latency_speedup = f["latency_history"]["p50_ms"] / q["latency_history"]["p50_ms"]
    base_recall = f["quality"]["recall@10"]
    recall_drop = (base_recall - q["quality"]["recall@10"]) / base_recall if base_recall else 0.0
    verdict = speedup >= 1.5 and recall_drop < 0.01
    summary = {"int8_catalog_speedup": speedup, "int8_history_latency_speedup": latency_speedup,
               "int8_recall_at_10_relative_drop": recall_drop, "int8_worth_offering": verdict}
    print(f"int8 vs float32: catalog {speedup:.2f}x, history latency {latency_speedup:.2f}x, "
          f"Recall@10 relative drop {recall_drop:+.2%} -> {'offer it' if verdict else 'not worth offering'} "
          f"(rule: >= 1.5x and < 1% drop)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "encoder.json"
    out.write_text(json.dumps({"benchmark": "encoder", "commit": git_commit(), "encoder": path or ZERO_SHOT, "features": features_dir,
                               "machine": machine(), "results": rows, "summary": summary}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
