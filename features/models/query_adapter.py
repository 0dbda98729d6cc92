"""A query tower that learns from the shop on a CPU budget: a low-rank residual adapter over the
frozen encoder's query vectors.

    q' = normalize(q + (q V) U^T)        U, V: (d, r); U starts at 0, so training starts at zero-shot

Item vectors stay the index's (the catalog is not re-encoded), so an adapter is trained in seconds
and applied per request at the cost of two (d x r) products. Loss: softmax cross-entropy over the
FULL catalog (every item a negative, the judged-irrelevant ones among them: the hard negatives a
search engine already confused) with several graded positives per query, weighted by their gain.
Early stopping on a validation metric the caller supplies (the evaluation passes full-catalog
nDCG@10 of dense retrieval on validation queries); the best epoch is kept, and `train_adapter`
reports the zero-shot score on the same queries so the caller uses the adapter only where it wins.
Weights are safetensors.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

WEIGHTS_FILE = "query_adapter.safetensors"
META_FILE = "query_adapter.json"
SEARCH_FILE = "search.json"  # a search version's choices: {"adapter": bool, "fusion": {...}, metrics}


@dataclass(frozen=True)
class AdapterParams:
    rank: int = 32  # r of the residual U V^T
    temperature: float = 0.05  # softmax temperature of the cosine logits
    lr: float = 2e-3  # Adam
    weight_decay: float = 1e-4
    batch_size: int = 32  # queries per step
    max_epochs: int = 100
    patience: int = 8  # epochs without a better validation score before stopping
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError(f"query_adapter: rank, batch_size, max_epochs and patience must be >= 1, got {self}")
        if self.temperature <= 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"query_adapter: temperature and lr must be > 0 and weight_decay >= 0, got {self}")


class QueryAdapter:
    """q -> normalize(q + (q V) U^T); (n, d) float32 in, (n, d) unit rows out."""

    def __init__(self, u: np.ndarray, v: np.ndarray) -> None:
        if u.shape != v.shape or u.ndim != 2:
            raise ValueError(f"adapter U and V must both be (d, r), got {u.shape} and {v.shape}")
        self.u = np.ascontiguousarray(u, np.float32)
        self.v = np.ascontiguousarray(v, np.float32)

    @property
    def dim(self) -> int:
        return int(self.u.shape[0])

    def apply(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float32)
        one = q.ndim == 1
        q2 = q.reshape(1, -1) if one else q
        if q2.shape[1] != self.dim:
            raise ValueError(f"query vectors have {q2.shape[1]} dimensions; the adapter was trained on {self.dim}")
        out = q2 + (q2 @ self.v) @ self.u.T
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if one else out

    def save(self, folder: str | Path, meta: dict | None = None) -> None:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"u": self.u, "v": self.v}, str(folder / WEIGHTS_FILE))
        (folder / META_FILE).write_text(json.dumps(meta or {}, indent=1, default=str))

    @classmethod
    def load(cls, folder: str | Path) -> "QueryAdapter":
        from safetensors.numpy import load_file

        w = load_file(str(Path(folder) / WEIGHTS_FILE))
        return cls(w["u"], w["v"])


@dataclass
class Targets:
    """A training query's positives: catalog rows and their weights (the gain of their grade)."""

    rows: np.ndarray
    weights: np.ndarray


def train_adapter(queries: np.ndarray, targets: list[Targets], items: np.ndarray,
                  validate: Callable[[QueryAdapter | None], float], p: AdapterParams = AdapterParams(),
                  log: Callable[[str], None] = lambda s: None) -> tuple[QueryAdapter, dict]:
    """Train on `queries` (n, d) with `targets` against the catalog `items` (N, d), early-stopped on
    `validate(adapter)` (higher is better; `validate(None)` is the zero-shot score). Returns the
    best epoch's adapter and {zero_shot, best, best_epoch, epochs, seconds, better_than_zero_shot}."""
    import torch

    keep = [i for i, t in enumerate(targets) if len(t.rows) and float(np.sum(t.weights)) > 0]
    if not keep:
        raise ValueError("query adapter: no training query has a positive target (gain > 0)")
    t0 = time.perf_counter()
    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    n, d = len(keep), queries.shape[1]
    q = torch.from_numpy(np.asarray(queries, np.float32)[keep])
    it = torch.from_numpy(np.ascontiguousarray(items, np.float32))
    tgt = torch.zeros(n, len(items))
    for j, i in enumerate(keep):
        w = np.asarray(targets[i].weights, np.float32)
        tgt[j, torch.from_numpy(np.asarray(targets[i].rows, np.int64))] = torch.from_numpy(w / w.sum())
    u = torch.zeros(d, p.rank, requires_grad=True)
    v = torch.nn.Parameter(torch.randn(d, p.rank) / np.sqrt(d))
    opt = torch.optim.AdamW([u, v], lr=p.lr, weight_decay=p.weight_decay)

    def snapshot() -> QueryAdapter:
        return QueryAdapter(u.detach().numpy().copy(), v.detach().numpy().copy())

    zero = validate(None)
    best, best_epoch, best_adapter, epochs = zero, 0, snapshot(), 0
    for epoch in range(1, p.max_epochs + 1):
        epochs = epoch
        perm = torch.from_numpy(rng.permutation(n))
        for start in range(0, n, p.batch_size):
            idx = perm[start:start + p.batch_size]
            qb = q[idx]
            out = torch.nn.functional.normalize(qb + (qb @ v) @ u.T, dim=1)
            logp = torch.log_softmax(out @ it.T / p.temperature, dim=1)
            loss = -(tgt[idx] * logp).sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        score = validate(snapshot())
        log(f"query adapter epoch {epoch}: loss {float(loss.detach()):.4f}, validation {score:.4f} (zero-shot {zero:.4f})")
        if score > best + 1e-9:
            best, best_epoch, best_adapter = score, epoch, snapshot()
        elif epoch - best_epoch >= p.patience:
            break
    info = {"zero_shot": round(zero, 6), "best": round(best, 6), "best_epoch": best_epoch, "epochs": epochs,
            "train_queries": n, "seconds": round(time.perf_counter() - t0, 2), "better_than_zero_shot": best > zero,
            "params": asdict(p)}
    return best_adapter, info


class AdaptedEncoder:
    """An encoder whose query tower is followed by `adapter` (items are encoded as before)."""

    def __init__(self, encoder, adapter: QueryAdapter) -> None:
        self.encoder = encoder
        self.adapter = adapter

    def encode(self, texts, tower: str = "query", **kw) -> np.ndarray:
        vecs = self.encoder.encode(texts, tower, **kw)
        return self.adapter.apply(vecs) if tower == "query" else vecs

    def __getattr__(self, name: str):
        return getattr(self.encoder, name)


def read_search_version(folder: str | Path) -> tuple[QueryAdapter | None, dict]:
    """(the adapter, or None where the version keeps zero-shot queries; search.json's contents)."""
    folder = Path(folder)
    spec = json.loads((folder / SEARCH_FILE).read_text())
    adapter = QueryAdapter.load(folder) if spec.get("adapter") else None
    return adapter, spec
