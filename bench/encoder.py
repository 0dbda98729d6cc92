"""Benchmark: catalog encoding throughput, single-request encode latency, ONNX Runtime vs torch, int8.

    python -m bench.encoder [--encoder latest|zero-shot|PATH] [--valid 1000] [--requests 200]

In one run, on one machine, for the float32 torch encoder, its dynamically quantised int8 twin
(features.encoder.quantize_int8), the same weights exported to ONNX and run by ONNX Runtime
(features/models/onnx_encoder.py, what the index job and serving use), and that export with its
query tower quantised two ways (serving's encoder.query_precision=int8 and int8-block; item vectors
float32):
  - catalog throughput: every item text of the newest features version, batch 128, 2 threads
    (the build_index job's work), items/s;
  - latency of one request, 1 thread (a serving replica's share): a search query (a catalog title
    in lower case) and a history text (a real valid-split anchor), p50/p99 ms over --requests,
    back to back; and the query again with 20 ms between requests (what one of two replicas sees at
    100 req/s: on this box the caches go cold in between, and a float32 query took 1.5x longer
    than back to back at 7edcd63);
  - quality: Recall@10 / NDCG@10 on a seeded valid-split sample against the full catalog.
The int8 option is worth offering if it is >= 1.5x faster and loses < 1% of Recall@10 (relative).
ONNX target: query p50 at batch 1 >= 1.5x faster than torch float32, with the same quality and a
minimum cosine >= 0.999 between their vectors of the catalog.
Writes bench/results/encoder.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from bench.feature_job import RESULTS, machine
from features import artifacts as A
from features.artifacts import git_commit
from features.data import schema as S
from features.models import onnx_encoder as OX
from features.models import training as TR
from features.models.encoder import LATEST, ZERO_SHOT, EncoderConfig, load_encoder, quantize_int8


def _latency_ms(encoder, texts: list[str], pause_s: float = 0.0) -> dict:
    """Per-request latency at batch 1, back to back, or with `pause_s` between requests."""
    torch.set_num_threads(1)  # an OnnxEncoder's threads are fixed when its session is built
    encoder.encode(texts[:5])  # warm-up
    times = []
    for t in texts:
        t0 = time.perf_counter()
        encoder.encode([t])
        times.append((time.perf_counter() - t0) * 1e3)
        time.sleep(pause_s)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(np.mean(times)), "n": len(times)}


def _throughput(encoder, texts: list[str], threads: int) -> dict:
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
    onnx_dir = OX.export_onnx(fp32, tempfile.mkdtemp(prefix="bench-onnx-"), path)
    # (for throughput, for single requests): ONNX Runtime sessions with 2 and 1 intra-op threads
    variants = {"float32": (fp32, fp32), "int8": (int8, int8),
                "onnx_float32": (OX.OnnxEncoder(onnx_dir, threads=2), OX.OnnxEncoder(onnx_dir, threads=1)),
                # serving's encoder.query_precision=int8 / int8-block: the query tower quantised, items float32
                "onnx_int8_query": (OX.OnnxEncoder(onnx_dir, 2, "int8"), OX.OnnxEncoder(onnx_dir, 1, "int8")),
                "onnx_int8_block_query": (OX.OnnxEncoder(onnx_dir, 2, "int8-block"),
                                          OX.OnnxEncoder(onnx_dir, 1, "int8-block"))}
    rows = {}
    for name, (enc, single) in variants.items():
        row = {"catalog": _throughput(enc, item_texts, threads=2)}
        row["latency_query"] = _latency_ms(single, queries)
        # 20 ms apart, as one of two replicas sees them at 100 req/s: caches go cold between queries
        row["latency_query_paced_20ms"] = _latency_ms(single, queries, pause_s=0.02)
        row["latency_history"] = _latency_ms(single, histories)
        torch.set_num_threads(2)
        row["quality"] = TR.evaluate(enc, item_texts, anchors, targets, ks=(10,))
        rows[name] = row
        print(f"  {name:<12} catalog {row['catalog']['items_per_s']:7.0f} items/s | query p50 "
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
    o = rows["onnx_float32"]
    torch.set_num_threads(2)
    sample = item_texts[:1000]
    cos = (fp32.encode(sample, "item") * variants["onnx_float32"][0].encode(sample, "item")).sum(1)
    zero = ~fp32.encode(sample, "item").any(1)  # blank texts: zero rows in both
    onnx = {"query_p50_speedup": f["latency_query"]["p50_ms"] / o["latency_query"]["p50_ms"],
            "history_p50_speedup": f["latency_history"]["p50_ms"] / o["latency_history"]["p50_ms"],
            "catalog_speedup": o["catalog"]["items_per_s"] / f["catalog"]["items_per_s"],
            "min_cosine_vs_torch": float(cos[~zero].min()),
            "ndcg_at_10_relative_change": (o["quality"]["ndcg@10"] - f["quality"]["ndcg@10"]) / f["quality"]["ndcg@10"]
            if f["quality"]["ndcg@10"] else 0.0}
    onnx["target_query_p50_1_5x_met"] = onnx["query_p50_speedup"] >= 1.5 and onnx["min_cosine_vs_torch"] >= 0.999
    summary["onnx_vs_torch"] = onnx
    ref = variants["onnx_float32"][1].encode(queries, "query")
    for name in ("onnx_int8_query", "onnx_int8_block_query"):
        q8 = rows[name]
        qcos = (ref * variants[name][1].encode(queries, "query")).sum(1)
        summary[f"{name}_vs_onnx_float32"] = {
            "query_p50_speedup": o["latency_query"]["p50_ms"] / q8["latency_query"]["p50_ms"],
            "query_paced_p50_speedup": o["latency_query_paced_20ms"]["p50_ms"] / q8["latency_query_paced_20ms"]["p50_ms"],
            "history_p50_speedup": o["latency_history"]["p50_ms"] / q8["latency_history"]["p50_ms"],
            "query_cosine_min": float(qcos.min()), "query_cosine_mean": float(qcos.mean()),
            "recall_at_10_relative_change": (q8["quality"]["recall@10"] - o["quality"]["recall@10"]) / o["quality"]["recall@10"]
            if o["quality"]["recall@10"] else 0.0,
            "ndcg_at_10_relative_change": (q8["quality"]["ndcg@10"] - o["quality"]["ndcg@10"]) / o["quality"]["ndcg@10"]
            if o["quality"]["ndcg@10"] else 0.0}
    print(f"ONNX Runtime vs torch: query p50 {onnx['query_p50_speedup']:.2f}x, history p50 "
          f"{onnx['history_p50_speedup']:.2f}x, catalog {onnx['catalog_speedup']:.2f}x, min cosine "
          f"{onnx['min_cosine_vs_torch']:.5f} -> target (>= 1.5x at batch 1, cosine >= 0.999) "
          f"{'MET' if onnx['target_query_p50_1_5x_met'] else 'MISSED'}")
    for name, label in (("onnx_int8_query", "int8"), ("onnx_int8_block_query", "int8-block")):
        i8 = summary[f"{name}_vs_onnx_float32"]
        print(f"ONNX {label} query tower vs ONNX float32: query p50 {i8['query_p50_speedup']:.2f}x back to back, "
              f"{i8['query_paced_p50_speedup']:.2f}x 20 ms apart, query cosine mean {i8['query_cosine_mean']:.4f} "
              f"(min {i8['query_cosine_min']:.4f}), valid NDCG@10 {i8['ndcg_at_10_relative_change']:+.2%}, "
              f"Recall@10 {i8['recall_at_10_relative_change']:+.2%}")
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
