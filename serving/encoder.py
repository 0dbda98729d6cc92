"""Query and item encoding: the QueryEncoder deployment (queries batched across requests by
@serve.batch; item upserts) and the InlineQueryEncoder an Ingress replica uses for queries when
encoder.placement is ingress (the default).

On ONNX Runtime by default, from the exported model the index version carries (the same file its
item vectors came from); encoder.runtime=torch serves the eager PyTorch model."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Awaitable, Callable

import numpy as np
from ray import serve

from features.models.encoder import ZERO_SHOT
from features.models.onnx_encoder import runtime_encoder
from features.models.query_adapter import AdaptedEncoder, read_search_version
from serving.settings import Resolved, ServingConfig


class QueryCache:
    """query text (stripped) -> embedding, least recently used evicted; 0 entries: off."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str) -> np.ndarray | None:
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
        return hit

    def put(self, key: str, vec: np.ndarray) -> None:
        if self.size:
            self.entries[key] = vec
            if len(self.entries) > self.size:
                self.entries.popitem(last=False)

    async def get_or_encode(self, text: str, stats: dict, encode: Callable[[str], Awaitable[np.ndarray]]) -> np.ndarray:
        """One query -> (d,) float32 unit vector, cached by its exact, stripped text."""
        stats["queries"] += 1
        key = text.strip()
        hit = self.get(key)
        if hit is not None:
            stats["cache_hits"] += 1
            return hit
        vec = await encode(key)
        self.put(key, vec)
        return vec


def load_query_encoder(cfg: ServingConfig, res: Resolved):
    """(encoder, checkpoint or None) on the configured runtime, from the index's export when it has
    one; its query tower followed by the search version's adapter when that version kept one."""
    e = cfg.encoder
    encoder, checkpoint = runtime_encoder(res.encoder_spec, cfg.artifacts_root, e.zero_shot, e.runtime, e.threads,
                                          onnx_dir=res.encoder_onnx, query_precision=e.query_precision)
    if res.search_dir is not None:
        adapter, _ = read_search_version(res.search_dir)
        if adapter is not None:
            encoder = AdaptedEncoder(encoder, adapter)
    return encoder, checkpoint


def warm_up_encoder(encoder) -> None:
    """The runtime's first call allocates: spend it on a throw-away query, not on a shopper's."""
    encoder.encode(["warm up"], "query")


class InlineQueryEncoder:
    """Queries encoded inside the Ingress replica (encoder.placement: ingress, the default).

    On ONNX Runtime a short query takes about 4 ms on one thread here, while the Serve hop to the
    QueryEncoder deployment cost about 6 ms more (bench/serve_latency.py's hop breakdown) and CPU
    on both sides; so the Ingress encodes queries itself, on one worker thread (the event loop
    stays free), from the same exported model. Item upserts still go to the QueryEncoder."""

    def __init__(self, cfg: ServingConfig, res: Resolved) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.encoder, self.checkpoint = load_query_encoder(cfg, res)
        warm_up_encoder(self.encoder)
        self.runtime, self.precision = cfg.encoder.runtime, cfg.encoder.query_precision
        self.cache = QueryCache(cfg.encoder.cache_size)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-encoder")
        self.stats = {"queries": 0, "cache_hits": 0, "encode_s": 0.0}

    def _encode(self, text: str) -> np.ndarray:
        t0 = time.perf_counter()
        vec = self.encoder.encode([text], "query")[0]
        self.stats["encode_s"] += time.perf_counter() - t0
        return vec

    async def encode_query(self, text: str) -> np.ndarray:
        import asyncio

        loop = asyncio.get_running_loop()
        return await self.cache.get_or_encode(text, self.stats, lambda key: loop.run_in_executor(self.pool, self._encode, key))

    def info(self) -> dict:
        return {"placement": "ingress", "runtime": self.runtime, "query_precision": self.precision, **self.stats,
                "cache_entries": len(self.cache.entries)}


@serve.deployment(name="QueryEncoder")
class QueryEncoder:
    def __init__(self, cfg: ServingConfig, res: Resolved) -> None:
        self.encoder, self.checkpoint = load_query_encoder(cfg, res)
        warm_up_encoder(self.encoder)
        self.runtime, self.precision = cfg.encoder.runtime, cfg.encoder.query_precision
        self.exported_at_start = self.runtime == "onnx" and res.encoder_onnx is None
        self.cache = QueryCache(cfg.encoder.cache_size)
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
        return await self.cache.get_or_encode(text, self.stats, self.encode_batch)

    def encode_items(self, texts: list[str]) -> np.ndarray:
        """Item texts -> (N, d) with the item tower (upserts; not batched across requests)."""
        return self.encoder.encode(texts, "item")

    def info(self) -> dict:
        return {"checkpoint": self.version, "runtime": self.runtime, "query_precision": self.precision,
                "exported_at_start": self.exported_at_start,
                **self.stats, "cache_entries": len(self.cache.entries), "time": time.time()}
