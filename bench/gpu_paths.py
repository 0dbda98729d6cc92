"""Every GPU path of the offline jobs, run end to end on one machine with a CUDA GPU.

    python -m bench.gpu_paths [--features DIR] [--events data/canonical/online_retail/events.parquet]
                              [--encoder-time-s 90] [--sequence-time-s 90] [--out bench/results/gpu_paths.json]

In one private Ray (every CPU of the machine and its GPU), on the bundled log's features:
1. `jobs.build_index` with `gpus_per_actor=1`: the zero-shot encoder encodes the catalog on CUDA
   (torch, one Ray Data actor). Then a parity check: 512 catalog texts encoded on the CPU (torch,
   float32) against the index's vectors (cosine per row), and the encoder's items/s on the GPU
   (the whole catalog, batch 512, after a warm-up) against the CPU (all cores, on those 512).
2. `jobs.train_encoder` with `train.use_gpu=true`: one Ray Train worker with the GPU (NCCL, bf16
   autocast), a full fine-tune (only the word embeddings frozen) at batch 256, validated every 50
   steps, early-stopped, capped at --encoder-time-s. The manifest says whether it beats the
   zero-shot model on the valid split (the rule serving applies). The test split is not scored.
3. `jobs.train_sequence` with `use_gpu=true`: the behaviour model on one Ray Train GPU worker over
   the index of step 1, the default model, early-stopped on validation, capped at --sequence-time-s.

`--features` reuses a features version (the feature job has no GPU path); without it, step 0 runs
`jobs.build_features`. Writes the figures with the machine, the software and the commit (give
`--commit` where the checkout has no .git) to --out. Exits 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from features.artifacts import git_commit
from jobs.common import CONFIG_DIR

RESULTS = Path(__file__).resolve().parent / "results"
ENCODER_RECIPE = ["train.num_workers=1", "train.amp=true", "train.batch_size=256",
                  "train.lr=5.0e-5", "train.warmup_steps=50", "train.max_steps=5000", "train.freeze_layers=0",
                  "train.freeze_embeddings=true", "train.eval_every_steps=50", "train.early_stopping_patience=3",
                  "test_examples=-1"]


def stage(results: dict, name: str, fn) -> None:
    """Run one stage; a failure is recorded (with its traceback's last lines) and the next stage runs."""
    t0 = time.perf_counter()
    print(f"=== {name}", flush=True)
    try:
        results[name] = fn() | {"wall_s": round(time.perf_counter() - t0, 1)}
    except Exception as e:  # noqa: BLE001 - the bench reports every stage's outcome
        results[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc().splitlines()[-6:],
                         "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(results[name], default=str)[:2000], flush=True)


def encode_rate(encoder, texts: list[str], repeats: int = 2) -> float:
    encoder.encode(texts[:64], tower="item", batch_size=64)  # warm-up (kernels, allocator)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder.encode(texts, tower="item", batch_size=512)
        if encoder.query_model.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def index_stage(ns, root: str, features: str, cpus: int) -> dict:
    import torch

    from features import artifacts as A
    from features.config import load_config
    from features.data import schema as S
    from features.models.encoder import EncoderConfig, TwoTowerEncoder
    from features.retrieval.index import ItemIndex
    from jobs import build_index

    cfg = load_config(build_index.BuildIndexConfig, CONFIG_DIR / "build_index.yaml",
                      [f"output_root={root}", f"features={features}", "encoder=zero-shot", "runtime=torch",
                       f"gpus_per_actor={int(ns.device == 'cuda')}", "num_actors=1", f"cpus_per_actor={min(4, cpus)}", f"ray.num_cpus={cpus}"])
    assert build_index.run(cfg) == 0
    out = A.latest_complete(root, "index")
    manifest = A.read_manifest(out)
    index = ItemIndex.load(out)
    vec = index.vectors()
    items = A.read_parquet(A.join(features, "items"), columns=[S.ITEM_ID, S.ITEM_TEXT])
    text = {str(k): v for k, v in items.iter_rows()}
    rows = np.random.default_rng(0).choice(len(index.item_ids), min(512, len(index.item_ids)), replace=False)
    sample = [text[index.item_ids[i]] for i in rows]
    zs = EncoderConfig(max_length=cfg.zero_shot.max_length)
    torch.set_num_threads(cpus)
    cpu_enc = TwoTowerEncoder(zs)
    cpu_vec = cpu_enc.encode(sample, tower="item", batch_size=64)
    cos = np.sum(cpu_vec * vec[rows], axis=1) / (np.linalg.norm(cpu_vec, axis=1) * np.linalg.norm(vec[rows], axis=1))
    gpu_enc = TwoTowerEncoder(zs).to(ns.device)
    all_texts = [text[i] for i in index.item_ids]
    return {"index": out, "items": len(index.item_ids), "job_encode_s": round(manifest["metrics"]["encode_s"], 2),
            "job_items_per_s": round(manifest["metrics"]["items_per_s"], 1),
            "parity_rows": len(rows), "parity_min_cosine": float(cos.min()), "parity_mean_cosine": float(cos.mean()),
            f"encode_items_per_s_{ns.device}_batch512": round(encode_rate(gpu_enc, all_texts), 1),
            "encode_items_per_s_cpu_threads": round(encode_rate(cpu_enc, sample, repeats=1), 1),
            "cpu_threads": cpus}


def encoder_stage(ns, root: str, features: str, cpus: int) -> dict:
    from features import artifacts as A
    from features.config import load_config
    from jobs import train_encoder

    cfg = load_config(train_encoder.TrainEncoderConfig, CONFIG_DIR / "train_encoder.yaml",
                      [f"output_root={root}", f"features={features}", f"train.cpus_per_worker={min(8, cpus)}",
                       f"train.use_gpu={str(ns.device == 'cuda').lower()}",
                       f"train.max_time_s={ns.encoder_time_s}", f"ray.num_cpus={cpus}"] + ENCODER_RECIPE)
    assert train_encoder.run(cfg) == 0
    m = A.read_manifest(A.latest_complete(root, "encoder"))["metrics"]
    keep = ("device", "num_workers", "train_examples", "valid_examples", "catalog_items", "steps", "best_step",
            "train_samples_per_s", "fit_s", "valid_zero_shot", "valid_best", "beats_zero_shot_on_valid")
    return {"recipe": ENCODER_RECIPE, "max_time_s": ns.encoder_time_s} | {k: m.get(k) for k in keep} | {
        "valid_vs_zero_shot": {k: v for k, v in (m.get("valid_vs_zero_shot") or {}).items() if k != "per_example"}}


def sequence_stage(ns, root: str, index: str, cpus: int) -> dict:
    from features import artifacts as A
    from features.config import load_config
    from jobs import train_sequence

    cfg = load_config(train_sequence.TrainSequenceConfig, CONFIG_DIR / "train_sequence.yaml",
                      [f"events={ns.events}", f"index={index}", f"output_root={root}", f"use_gpu={str(ns.device == 'cuda').lower()}",
                       "num_workers=1", f"cpus_per_worker={min(8, cpus)}", f"model.max_time_s={ns.sequence_time_s}",
                       f"ray.num_cpus={cpus}"])
    out = train_sequence.run(cfg)
    m = A.read_manifest(out)["metrics"]
    keep = ("device", "users", "interactions", "catalog_items", "valid_users", "windows", "epochs", "best_epoch",
            "stopped_by", "valid_ndcg@10", "train_s", "fit_s")
    return {k: m.get(k) for k in keep} | {"max_time_s": ns.sequence_time_s,
                                            "s_per_epoch": round(m["train_s"] / max(1, m["epochs"]), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", default=None, help="a features version folder (default: build one)")
    ap.add_argument("--events", default="data/canonical/online_retail/events.parquet")
    ap.add_argument("--encoder-time-s", type=int, default=90)
    ap.add_argument("--sequence-time-s", type=int, default=90)
    ap.add_argument("--cpus", type=int, default=min(16, os.cpu_count() or 2))
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: the same stages without the GPU (a reference, or a dry run of this script)")
    ap.add_argument("--commit", default=None, help="default: this checkout's git commit")
    ap.add_argument("--out", default=str(RESULTS / "gpu_paths.json"))
    ns = ap.parse_args(argv)
    import torch

    if ns.device == "cuda" and not torch.cuda.is_available():
        print("bench.gpu_paths needs a CUDA GPU (torch.cuda.is_available() is False)")
        return 2
    import ray
    import transformers

    from features import artifacts as A
    from jobs.common import RayConfig, init_ray

    root = tempfile.mkdtemp(prefix="intently-gpu-")
    init_ray(RayConfig(num_cpus=ns.cpus))
    props = torch.cuda.get_device_properties(0) if ns.device == "cuda" else None
    results: dict = {"bench": "gpu_paths", "commit": ns.commit or git_commit(), "device": ns.device, "machine": {
        "gpu": props and props.name, "gpu_memory_gib": props and round(props.total_memory / 2 ** 30, 1), "cpus": os.cpu_count(),
        "ray_cpus": ns.cpus, "platform": platform.platform()},
        "software": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "transformers": transformers.__version__, "ray": ray.__version__}}
    features = ns.features
    if features is None:
        from features.config import load_config
        from jobs import build_features

        def build() -> dict:
            cfg = load_config(build_features.BuildFeaturesConfig, CONFIG_DIR / "build_features.yaml",
                              [f"events={ns.events}", f"items={Path(ns.events).with_name('items.parquet')}",
                               f"output_root={root}", f"ray.num_cpus={ns.cpus}"])
            assert build_features.run(cfg) == 0
            return {"features": A.latest_complete(root, "features")}

        stage(results, "features", build)
        features = results["features"].get("features")
    results["features"] = features
    stage(results, "index", lambda: index_stage(ns, root, features, ns.cpus))
    stage(results, "encoder", lambda: encoder_stage(ns, root, features, ns.cpus))
    index = results["index"].get("index")
    if index:
        stage(results, "sequence", lambda: sequence_stage(ns, root, index, ns.cpus))
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"-> {ns.out}")
    return 1 if any("error" in v for v in results.values() if isinstance(v, dict)) else 0


if __name__ == "__main__":
    raise SystemExit(main())
