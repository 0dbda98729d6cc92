"""A query tower that learns from the shop on a CPU budget: a low-rank residual adapter over the
frozen encoder's query vectors.

    q' = normalize(q + (q V) U^T)        U, V: (d, r); U starts at 0, so training starts at zero-shot

Item vectors stay the index's (the catalog is not re-encoded), so an adapter is trained in seconds
and applied per request at the cost of two (d x r) products. Loss: softmax cross-entropy over the
FULL catalog (every item a negative, the judged-irrelevant ones among them: the hard negatives a
search engine already confused) with several graded positives per query, weighted by their gain.
How long to train is chosen on a metric the caller supplies (the jobs pass full-catalog nDCG@10
of dense retrieval): `cross_validate_adapter` (what the jobs use) picks the epoch count by k-fold
cross-validation over all the training queries and returns every query's out-of-fold and zero-shot
score, so the caller keeps the adapter only where it wins on all of them; `train_adapter`
early-stops on a held-out set instead. Weights are safetensors.
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


class _Fit:
    """One adapter being trained, an epoch at a time."""

    def __init__(self, queries: np.ndarray, targets: list[Targets], items, p: AdapterParams) -> None:
        import torch

        keep = [i for i, t in enumerate(targets) if len(t.rows) and float(np.sum(t.weights)) > 0]
        if not keep:
            raise ValueError("query adapter: no training query has a positive target (gain > 0)")
        torch.manual_seed(p.seed)
        self.p, self.n, d = p, len(keep), queries.shape[1]
        self.rng = np.random.default_rng(p.seed)
        self.q = torch.from_numpy(np.asarray(queries, np.float32)[keep])
        self.items = items if isinstance(items, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(items, np.float32))
        # The targets as sparse rows (query j's positives are rows[ptr[j]:ptr[j + 1]], weights summing
        # to 1): a dense (queries x catalog) matrix would take gigabytes on a large catalog.
        self.rows = np.concatenate([np.asarray(targets[i].rows, np.int64) for i in keep])
        w = [np.asarray(targets[i].weights, np.float64) for i in keep]
        self.weights = torch.from_numpy(np.concatenate([x / x.sum() for x in w]).astype(np.float32))
        self.ptr = np.r_[0, np.cumsum([len(x) for x in w])]
        self.u = torch.zeros(d, p.rank, requires_grad=True)
        self.v = torch.nn.Parameter(torch.randn(d, p.rank) / np.sqrt(d))
        self.opt = torch.optim.AdamW([self.u, self.v], lr=p.lr, weight_decay=p.weight_decay)
        self.loss = float("nan")

    def epoch(self) -> None:
        import torch

        perm = torch.from_numpy(self.rng.permutation(self.n))
        for start in range(0, self.n, self.p.batch_size):
            idx = perm[start:start + self.p.batch_size]
            qb = self.q[idx]
            out = torch.nn.functional.normalize(qb + (qb @ self.v) @ self.u.T, dim=1)
            logp = torch.log_softmax(out @ self.items.T / self.p.temperature, dim=1)
            at = idx.numpy()
            flat = np.concatenate([np.arange(self.ptr[i], self.ptr[i + 1]) for i in at])
            local = np.repeat(np.arange(len(at)), self.ptr[at + 1] - self.ptr[at])
            picked = logp[torch.from_numpy(local), torch.from_numpy(self.rows[flat])]
            loss = -(self.weights[torch.from_numpy(flat)] * picked).sum() / len(at)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.loss = float(loss.detach())

    def snapshot(self) -> QueryAdapter:
        return QueryAdapter(self.u.detach().numpy().copy(), self.v.detach().numpy().copy())


def train_adapter(queries: np.ndarray, targets: list[Targets], items: np.ndarray,
                  validate: Callable[[QueryAdapter | None], float], p: AdapterParams = AdapterParams(),
                  log: Callable[[str], None] = lambda s: None) -> tuple[QueryAdapter, dict]:
    """Train on `queries` (n, d) with `targets` against the catalog `items` (N, d), early-stopped on
    `validate(adapter)` (higher is better; `validate(None)` is the zero-shot score). Returns the
    best epoch's adapter and {zero_shot, best, best_epoch, epochs, seconds, better_than_zero_shot}."""
    t0 = time.perf_counter()
    fit = _Fit(queries, targets, items, p)
    zero = validate(None)
    best, best_epoch, best_adapter, epochs = zero, 0, fit.snapshot(), 0
    for epoch in range(1, p.max_epochs + 1):
        epochs = epoch
        fit.epoch()
        score = validate(fit.snapshot())
        log(f"query adapter epoch {epoch}: loss {fit.loss:.4f}, validation {score:.4f} (zero-shot {zero:.4f})")
        if score > best + 1e-9:
            best, best_epoch, best_adapter = score, epoch, fit.snapshot()
        elif epoch - best_epoch >= p.patience:
            break
    info = {"zero_shot": round(zero, 6), "best": round(best, 6), "best_epoch": best_epoch, "epochs": epochs,
            "train_queries": fit.n, "seconds": round(time.perf_counter() - t0, 2), "better_than_zero_shot": best > zero,
            "params": asdict(p)}
    return best_adapter, info


# Out-of-fold queries enough for the verdict: with more fitting queries than folds x this, fewer of
# the folds are trained (a tenth of a large judgment set is already a powerful validation set, and
# every fold trained costs as much as the final adapter).
MIN_HELD_OUT = 500


def cross_validate_adapter(queries: np.ndarray, targets: list[Targets], items: np.ndarray,
                           score: Callable[[np.ndarray, np.ndarray], np.ndarray], p: AdapterParams = AdapterParams(),
                           folds: int = 5, log: Callable[[str], None] = lambda s: None,
                           min_held_out: int = MIN_HELD_OUT
                           ) -> tuple[QueryAdapter, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Choose the number of epochs by k-fold cross-validation over the given queries, then train on
    all of them for that many epochs. A few dozen held-out queries are too few to tell an adapter's
    gain from noise; here every query is held out once (on a small judgment set), so the caller's
    verdict (adapter vs zero-shot) rests on all of them. On a large one only as many folds are
    trained as hold out `min_held_out` queries (at least one fold).

    `score(vectors, which)` returns per-query scores (higher is better) of the query vectors
    `vectors` (m, d) for the queries at positions `which` (m,) of `queries`. The fold adapters train
    in lockstep; after each epoch every held-out query is scored by the adapter that did not see it,
    and training stops once the mean of those out-of-fold scores has not improved for `p.patience`
    epochs. Returns (the adapter trained on all queries for the best epoch count, the out-of-fold
    scores at that epoch, the zero-shot scores, the out-of-fold query vectors at that epoch, info);
    the score arrays have one entry per query and the vectors one row, NaN for a query no trained
    fold held out. The out-of-fold vectors are what anything fitted downstream of the adapter (the
    fusion of dense and lexical retrieval) should see: the final adapter's vectors of the queries it
    was trained on are better than it will ever be on a new query. With a best epoch count of 0 the
    returned adapter is untrained (the identity), the two score arrays are equal and the vectors
    are the given ones."""
    n = len(queries)
    if folds < 2 or n < folds:
        raise ValueError(f"query adapter cross-validation needs folds >= 2 and at least that many queries; "
                         f"got folds={folds}, {n} queries")
    import torch

    t0 = time.perf_counter()
    items_t = torch.from_numpy(np.ascontiguousarray(items, np.float32))
    fold = np.random.default_rng(p.seed).permutation(np.arange(n) % folds)
    trained = min(folds, max(1, -(-min_held_out * folds // n)))
    held = [np.flatnonzero(fold == f) for f in range(trained)]
    fits = [_Fit(queries[fold != f], [t for t, k in zip(targets, fold) if k != f], items_t, p) for f in range(trained)]
    out_of_fold = np.concatenate(held)
    zero = np.full(n, np.nan)
    zero[out_of_fold] = score(np.asarray(queries, np.float32)[out_of_fold], out_of_fold)

    def oof() -> tuple[np.ndarray, np.ndarray]:
        out, vecs = np.full(n, np.nan), np.full(queries.shape, np.nan, np.float32)
        for f, fit in zip(held, fits):
            vecs[f] = fit.snapshot().apply(queries[f])
            out[f] = score(vecs[f], f)
        return out, vecs

    best_vecs = np.full(queries.shape, np.nan, np.float32)
    best_vecs[out_of_fold] = np.asarray(queries, np.float32)[out_of_fold]
    curve, best, best_epoch = [float(np.nanmean(zero))], zero, 0
    for epoch in range(1, p.max_epochs + 1):
        for fit in fits:
            fit.epoch()
        now, vecs = oof()
        curve.append(float(np.nanmean(now)))
        log(f"query adapter epoch {epoch}: out-of-fold validation {curve[-1]:.4f} (zero-shot {curve[0]:.4f})")
        if curve[-1] > max(curve[:-1]) + 1e-9:
            best, best_vecs, best_epoch = now, vecs, epoch
        elif epoch - best_epoch >= p.patience:
            break
    final = _Fit(queries, targets, items_t, p)
    for _ in range(best_epoch):
        final.epoch()
    info = {"zero_shot": round(curve[0], 6), "best": round(curve[best_epoch], 6), "best_epoch": best_epoch,
            "epochs": len(curve) - 1, "folds": folds, "folds_trained": trained, "held_out_queries": len(out_of_fold),
            "train_queries": final.n, "out_of_fold_curve": [round(c, 6) for c in curve],
            "seconds": round(time.perf_counter() - t0, 2), "params": asdict(p)}
    return final.snapshot(), best, zero, best_vecs, info


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
