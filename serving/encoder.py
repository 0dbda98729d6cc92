"""QueryEncoder deployment: text -> embedding, with queries batched across requests by @serve.batch.

On ONNX Runtime by default, from the exported model the index version carries (the same file its
item vectors came from); encoder.runtime=torch serves the eager PyTorch model."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
from ray import serve

from features.models.encoder import ZERO_SHOT
from features.models.onnx_encoder import runtime_encoder
from serving.settings import Resolved, ServingConfig


@serve.deployment(name="QueryEncoder")
class QueryEncoder:
    def __init__(self, cfg: ServingConfig, res: Resolved) -> None:
        e = cfg.encoder
        self.encoder, self.checkpoint = runtime_encoder(res.encoder_spec, cfg.artifacts_root, e.zero_shot, e.runtime,
                                                        e.threads, onnx_dir=res.encoder_onnx)
        self.runtime = e.runtime
        self.exported_at_start = e.runtime == "onnx" and res.encoder_onnx is None
        self.cache_size = cfg.encoder.cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.stats = {"queries": 0, "cache_hits": 0, "batches": 0, "batched_texts": 0, "encode_s": 0.0}
        self.encode_batch.set_max_batch_size(cfg.encoder.max_batch_size)
        self.encode_batch.set_batch_wait_timeout_s(cfg.encoder.batch_wait_timeout_s)
        self.version = ZERO_SHOT if self.checkpoint is None else self.checkpoint

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)  # reset from the config in __init__
    async def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        out = list(self.encoder.encode(texts, "query"))
        self.stats["batches"] += 1
        self.stats["batched_texts"] += len(texts)
        self.stats["encode_s"] += time.perf_counter() - t0
        return out

    async def encode_query(self, text: str) -> np.ndarray:
        """One query -> (d,) float32 unit vector (cached by its exact, stripped text)."""
        self.stats["queries"] += 1
        key = text.strip()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.stats["cache_hits"] += 1
            return hit
        vec = await self.encode_batch(key)
        if self.cache_size:
            self._cache[key] = vec
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return vec

    def encode_items(self, texts: list[str]) -> np.ndarray:
        """Item texts -> (N, d) with the item tower (upserts; not batched across requests)."""
        return self.encoder.encode(texts, "item")

    def info(self) -> dict:
        return {"checkpoint": self.version, "runtime": self.runtime, "exported_at_start": self.exported_at_start, **self.stats, "cache_entries": len(self._cache),
                "time": time.time()}
