"""Encode the catalog with an encoder checkpoint and build the FAISS item index, on Ray Data.

    python -m jobs.build_index [--config jobs/configs/build_index.yaml] [--set encoder=zero-shot ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.build_index ...

Steps: read the items of a features version -> map_batches with an actor pool (each actor loads
the encoder once) -> item vectors to the driver -> FAISS index whose type follows the catalog size
and config (exact inner product below index.exact_below items, else HNSW; or as configured) ->
artifacts/index/<version>/ (index.faiss, index.json, manifest.json last), then a few probe
queries as a sanity check.

runtime=onnx (default, CPU): the driver exports the encoder to ONNX once
(features/models/onnx_encoder.py), the actors encode with ONNX Runtime, and the exported folder
is written into the version as encoder_onnx/, where serving and evaluation read it, so the item
vectors and the query vectors come from the same file. runtime=torch, or gpus_per_actor > 0,
encodes with torch (on CUDA with a GPU); serving then exports its own copy at start.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from features import artifacts as A
from features.config import ConfigError, to_dict
from features.data import schema as S
from features.data.text import popular_title_queries
from features.models import onnx_encoder as OX
from features.models.encoder import LATEST, EncoderConfig, load_encoder, resolve_checkpoint
from features.retrieval.index import IndexConfig, ItemIndex
from jobs.common import RayConfig, Steps, check_fits, init_ray, load_job_config, parse_args, run_job

KIND = "index"
EMB_COLUMN = "item_emb"


@dataclass(frozen=True)
class BuildIndexConfig:
    features: str | None = None  # a features version folder; null: the newest complete one under output_root
    output_root: str = "artifacts"
    encoder: str = LATEST  # "latest", "zero-shot", or a folder (encoder version, checkpoint, training checkpoint)
    zero_shot: EncoderConfig = field(default_factory=EncoderConfig)  # the model used when encoder=zero-shot
    index: IndexConfig = field(default_factory=IndexConfig)
    runtime: str = "onnx"  # onnx (ONNX Runtime, CPU; exported into the version) | torch
    encode_batch_size: int = 256
    num_actors: int = 2  # encoder replicas in the Ray Data actor pool
    cpus_per_actor: int = 1  # and torch threads per actor
    gpus_per_actor: float = 0.0
    probe_queries: tuple[str, ...] = ()  # searched once built, as a sanity check; empty: chosen from the catalog
    probes: int = 3  # without probe_queries: the titles' first words of the items most shoppers chose; 0: none
    ray: RayConfig = field(default_factory=RayConfig)


CPU_SUB_BATCH = 32  # 1.4x faster than one padded batch of 256 on mixed-length item texts (by_length)


class ItemEncoder:
    """Ray Data actor: loads the encoder once, then maps item batches to item vectors.

    `onnx`: the exported folder's files ({name: bytes}, from the object store, so an actor on
    another node has them too); None: the torch model for `spec`."""

    def __init__(self, spec: str, artifacts_root: str, zero_shot: EncoderConfig, threads: int, use_gpu: bool,
                 onnx: "ray.ObjectRef | dict[str, bytes] | None" = None) -> None:
        # On a CPU a Ray batch is encoded in sub-batches of texts of similar length (padding is work;
        # features/models/encoder.py's by_length); a GPU takes the whole batch at once.
        self.sub_batch = None if use_gpu else CPU_SUB_BATCH
        if onnx is not None:
            self.encoder = OX.from_files(ray.get(onnx) if isinstance(onnx, ray.ObjectRef) else onnx, threads)
            return
        import torch

        torch.set_num_threads(threads)
        self.encoder, _ = load_encoder(spec, artifacts_root, zero_shot)
        if use_gpu:
            self.encoder.to("cuda")

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(S.ITEM_TEXT).to_pylist()
        emb = self.encoder.encode(texts, tower="item", batch_size=self.sub_batch or len(texts) or 1)  # (B, d) float32
        flat = pa.array(emb.reshape(-1), pa.float32())
        return pa.table({S.ITEM_ID: batch.column(S.ITEM_ID),
                         EMB_COLUMN: pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])})


def check_config(cfg: BuildIndexConfig) -> None:
    for name in ("encode_batch_size", "num_actors", "cpus_per_actor"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.gpus_per_actor < 0:
        raise ConfigError(f"gpus_per_actor must be >= 0, got {cfg.gpus_per_actor}")
    if cfg.probes < 0:
        raise ConfigError(f"probes must be >= 0 (0: no probe queries), got {cfg.probes}")
    check_fits(cfg.ray, cfg.num_actors * cfg.cpus_per_actor, cfg.num_actors * cfg.gpus_per_actor,
               "num_actors x cpus_per_actor (and gpus_per_actor)")
    try:
        OX.check_runtime(cfg.runtime, "runtime")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def export_for_index(cfg: BuildIndexConfig, checkpoint: str | None) -> Path | None:
    """The ONNX folder the actors, the probes and the version share (None: encode with torch)."""
    if cfg.runtime != "onnx" or cfg.gpus_per_actor > 0:
        return None
    return OX.export_spec(checkpoint or cfg.encoder, cfg.output_root, cfg.zero_shot,
                          tempfile.mkdtemp(prefix="intently-onnx-"))[0]


def run(cfg: BuildIndexConfig) -> int:
    check_config(cfg)
    steps = Steps("build_index")
    checkpoint = resolve_checkpoint(cfg.encoder, cfg.output_root)  # fail fast, before Ray starts
    features_dir = cfg.features or A.latest_complete(cfg.output_root, "features")
    if features_dir is None:
        raise FileNotFoundError(f"no complete features version under {cfg.output_root}/features; run jobs.build_features first")
    init_ray(cfg.ray)

    onnx_dir = export_for_index(cfg, checkpoint)
    runtime = "torch" if onnx_dir is None else "onnx"
    steps(f"encode the catalog of {features_dir} with {checkpoint or 'the zero-shot model'} on {runtime} "
          f"(Ray Data, {cfg.num_actors} actors x {cfg.cpus_per_actor} CPU)")
    t0 = time.perf_counter()
    onnx_files = None if onnx_dir is None else ray.put(OX.folder_files(onnx_dir))
    # Materialised first: the read tasks then never wait for CPUs the encoder actors hold (with
    # num_actors x cpus_per_actor = all CPUs, a streaming read would deadlock).
    items = ray.data.read_parquet(A.join(features_dir, "items")).select_columns([S.ITEM_ID, S.ITEM_TEXT]).materialize()
    # The items table is usually one file, so one block: the pool would hand it to one actor and
    # leave the others idle. A few blocks per actor (at least a batch each) keep every actor busy.
    blocks = max(1, min(4 * cfg.num_actors, -(-items.count() // cfg.encode_batch_size)))
    if items.num_blocks() < blocks:
        items = items.repartition(blocks).materialize()
    ds = items.map_batches(
        ItemEncoder,
        fn_constructor_kwargs=dict(spec=checkpoint or cfg.encoder, artifacts_root=cfg.output_root,
                                   zero_shot=cfg.zero_shot, threads=cfg.cpus_per_actor, use_gpu=cfg.gpus_per_actor > 0,
                                   onnx=onnx_files),
        batch_size=cfg.encode_batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None,
    )
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        raise ValueError(f"{features_dir}/items holds no items")
    # The actors return blocks in the order they finish: sorted by item id, the same features
    # version always gives an index with the same rows, whichever actor was faster.
    table = pa.concat_tables(tables).sort_by(S.ITEM_ID)
    encode_s = time.perf_counter() - t0
    item_ids = [str(i) for i in table.column(S.ITEM_ID).to_pylist()]
    emb = np.stack(table.column(EMB_COLUMN).to_numpy(zero_copy_only=False)).astype(np.float32)  # (N, d)
    print(f"  {len(item_ids):,} items -> {emb.shape[1]}-d vectors in {encode_s:.1f}s "
          f"({len(item_ids) / encode_s:.0f} items/s incl. actor start-up)", flush=True)

    steps("build the FAISS index")
    t1 = time.perf_counter()
    index = ItemIndex.build(item_ids, emb, cfg.index)
    build_s = time.perf_counter() - t1

    version = A.new_version()
    out_dir = A.join(cfg.output_root, KIND, version)
    steps(f"write {out_dir}")
    index.save(out_dir)
    if onnx_dir is not None:
        A.upload_dir(onnx_dir, A.join(out_dir, OX.FOLDER))
    encoder_info: dict = {"spec": cfg.encoder, "checkpoint": checkpoint, "zero_shot": checkpoint is None,
                          "runtime": runtime, "onnx": None if onnx_dir is None else OX.FOLDER}
    if checkpoint is not None:
        encoder_info["weights_sha256"] = A.fingerprint(A.join(checkpoint, "model.safetensors"))["sha256"]
    A.write_manifest(out_dir, A.manifest(
        KIND, version, to_dict(cfg),
        inputs={"features": {"path": str(features_dir), "version": A.read_manifest(features_dir).get("version")},
                "encoder": encoder_info},
        outputs={"index": "index.faiss", "ids": "index.json", "dim": index.dim, "item_count": len(index),
                 "index_type": index.kind, "index_params": index.params},
        metrics={"encode_s": encode_s, "items_per_s": len(item_ids) / encode_s, "build_s": build_s},
    ))

    probes: list[tuple[str, list[tuple[str, float]]]] = []
    if cfg.probe_queries or cfg.probes:
        # Queries that mean something on this catalog (a shop's own data, not the demo's) unless named.
        items = A.read_parquet(A.join(features_dir, "items"), columns=[S.ITEM_ID, S.ITEM_TEXT, S.TITLE, S.N_USERS])
        queries = list(cfg.probe_queries) or popular_title_queries(items, cfg.probes)
        steps(f"probe queries ({'as configured' if cfg.probe_queries else 'from the titles of the items most shoppers chose'})")
        encoder, _ = OX.runtime_encoder(cfg.encoder if checkpoint is None else checkpoint, cfg.output_root,
                                        cfg.zero_shot, runtime="torch" if onnx_dir is None else "onnx",
                                        onnx_dir=None if onnx_dir is None else str(onnx_dir))
        scores, ids = index.search(encoder.encode(queries), 3) if queries else (np.zeros((0, 3)), [])
        text = {str(k): v for k, v in items.select(S.ITEM_ID, S.ITEM_TEXT).iter_rows()}
        for q, row_ids, row_scores in zip(queries, ids, scores):
            probes.append((q, [(f"{i} {text.get(i, '')}", float(s)) for i, s in zip(row_ids, row_scores) if i]))
    if onnx_dir is not None:
        shutil.rmtree(onnx_dir, ignore_errors=True)
    steps("done")
    print(f"index {version} -> {out_dir}")
    print(f"  {len(index):,} items, {index.dim}-d, {index.kind} {index.params or ''}; encoder: {checkpoint or 'zero-shot'}")
    print(f"  encoding {len(item_ids) / encode_s:.0f} items/s, index build {build_s:.2f}s")
    for q, hits in probes:
        print(f"  {q!r}: " + "; ".join(f"{h} ({s:.2f})" for h, s in hits))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Encode the catalog and build the FAISS item index.", "build_index.yaml", argv)
    return run_job("build_index", lambda: run(load_job_config(BuildIndexConfig, args)))


if __name__ == "__main__":
    raise SystemExit(main())
