"""A compact SASRec (Kang & McAuley, 2018): self-attention over a user's item-id sequence.

The baseline a sequential-recommendation reviewer asks for first. Item ids only (no text), causal
self-attention over the last `max_len` items, trained to predict the next item at every position
with FULL softmax cross-entropy over the whole catalog (no sampled negatives; at 4k items the
logits are cheap). Scores the whole catalog for a history.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from features.data import schema as S


@dataclass(frozen=True)
class SASRecParams:
    """The ID-only SASRec baseline (Kang & McAuley 2018: two self-attention blocks, length 50, dropout 0.2)."""

    dim: int = 64
    heads: int = 2
    layers: int = 2
    max_len: int = 50
    dropout: float = 0.2
    lr: float = 2e-3
    batch_size: int = 128
    epochs: int = 40
    max_time_s: float = 300.0  # stops after the epoch that crosses it (about 8 epochs on the bundled data, 2 CPUs)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"sasrec.dim ({self.dim}) must be a multiple of sasrec.heads ({self.heads})")
        for name in ("dim", "heads", "layers", "max_len", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"sasrec.{name} must be >= 1, got {getattr(self, name)}")


def sequences(events: pl.DataFrame, row: dict[str, int]) -> dict[str, list[int]]:
    """user -> catalog rows of their positive item events in (ts, event_id) order, consecutive
    repeats collapsed; items outside the catalog are skipped."""
    pos = (events.filter(pl.col(S.EVENT_TYPE).is_in(list(S.POSITIVE_EVENT_TYPES)) & pl.col(S.ITEM_ID).is_not_null())
           .sort([S.USER_ID, S.TS, S.EVENT_ID]))
    out: dict[str, list[int]] = {}
    for (user,), g in pos.group_by(S.USER_ID, maintain_order=True):
        seq: list[int] = []
        for item in g[S.ITEM_ID].to_list():
            r = row.get(item)
            if r is not None and (not seq or seq[-1] != r):
                seq.append(r)
        if seq:
            out[str(user)] = seq
    return out


class SASRec(torch.nn.Module):
    def __init__(self, n_items: int, p: SASRecParams) -> None:
        super().__init__()
        self.p = p
        self.item = torch.nn.Embedding(n_items + 1, p.dim, padding_idx=0)  # id 0 pads; item row r is id r + 1
        self.pos = torch.nn.Embedding(p.max_len, p.dim)
        layer = torch.nn.TransformerEncoderLayer(p.dim, p.heads, dim_feedforward=2 * p.dim, dropout=p.dropout,
                                                 batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, p.layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(p.dim)
        self.drop = torch.nn.Dropout(p.dropout)
        causal = torch.triu(torch.ones(p.max_len, p.max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)
        # Small item embeddings: they are also the output layer, and N(0, 1) rows would start the
        # full softmax with logits of +-50 (a loss far above log N).
        torch.nn.init.normal_(self.item.weight, std=0.05)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids -> (B, L, d) states (position t has seen ids[:, :t+1])."""
        L = ids.shape[1]
        pad = (ids > 0).unsqueeze(-1).float()
        x = self.drop(self.item(ids) * self.p.dim ** 0.5 + self.pos(torch.arange(L, device=ids.device))) * pad
        h = self.blocks(x, mask=self.causal[:L, :L], is_causal=True)
        return self.norm(h) * pad

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item.weight[1:].T  # full softmax over every catalog item


def _windows(seqs: list[list[int]], L: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) (W, L) of ids (row + 1), left-padded: every sequence cut from its end into
    windows of L + 1 items; targets are the inputs shifted by one."""
    xs, ys = [], []
    for s in seqs:
        ids = [r + 1 for r in s]
        end = len(ids)
        while end >= 2:
            chunk = ids[max(0, end - L - 1): end]
            x, y = chunk[:-1], chunk[1:]
            xs.append([0] * (L - len(x)) + x)
            ys.append([0] * (L - len(y)) + y)
            end -= L
    return np.array(xs, dtype=np.int64).reshape(-1, L), np.array(ys, dtype=np.int64).reshape(-1, L)


def train(seqs: dict[str, list[int]], n_items: int, p: SASRecParams, log=print, threads: int | None = None
          ) -> tuple[SASRec, dict]:
    torch.manual_seed(p.seed)
    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(p.seed)
    x, y = _windows(list(seqs.values()), p.max_len)
    if not len(x):
        raise ValueError("sasrec: no user has two or more items to learn a next item from")
    model = SASRec(n_items, p)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr, betas=(0.9, 0.98))
    t0 = time.perf_counter()
    losses = []
    for epoch in range(p.epochs):
        model.train()
        order = rng.permutation(len(x))
        total, n = 0.0, 0
        for i in range(0, len(order), p.batch_size):
            b = order[i:i + p.batch_size]
            xb, yb = torch.from_numpy(x[b]), torch.from_numpy(y[b])
            h = model.hidden(xb)
            real = yb > 0  # only real positions pay for the (P, N) logits of the full softmax
            loss = torch.nn.functional.cross_entropy(model.logits(h[real]), yb[real] - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            n += len(b)
        losses.append(total / n)
        if log:
            log(f"  sasrec epoch {epoch + 1}: loss {losses[-1]:.3f} ({time.perf_counter() - t0:.0f}s)")
        if time.perf_counter() - t0 > p.max_time_s:
            break
    model.eval()
    return model, {"windows": int(len(x)), "epochs": len(losses), "final_loss": round(losses[-1], 4),
                   "train_s": round(time.perf_counter() - t0, 1)}


@torch.no_grad()
def scores(model: SASRec, history: list[int]) -> np.ndarray:
    """(N,) next-item scores for one history of catalog rows (oldest first); zeros for an empty one."""
    L = model.p.max_len
    if not history:
        return np.zeros(model.item.num_embeddings - 1, np.float32)
    ids = [r + 1 for r in history[-L:]]
    x = torch.tensor([[0] * (L - len(ids)) + ids], dtype=torch.int64)
    return model.logits(model.hidden(x)[:, -1]).numpy()[0]
