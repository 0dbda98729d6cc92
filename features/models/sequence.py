"""The behaviour model: a causal transformer (SASRec-style) over a shopper's last interactions.

An item is represented by a small trainable adapter over the FROZEN text encoder's vector (the
index job's vectors, computed once) plus a learned item-ID embedding; an item without training
interactions (a new one) has its text part only, so cold items are scored too. Each position
also carries its event type and the (log-bucketed) time since the previous interaction. The
state after the newest interaction is the user vector, in the same space as the item vectors:
score(item) = user . item (that space is what FAISS searches at serving time).

Loss: softmax cross-entropy of the next item over the WHOLE catalog (positions chunked), or a
sampled softmax with logQ correction above `sampled_softmax_above` items. Early stopping on a
validation split (each training user's last new item) with patience, best epoch kept.

With text=False and events=False this is exactly the ID-only SASRec baseline (Kang & McAuley
2018), so "does text help" is one switch, the same code and the same training budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from features.data import schema as S
from features.models.dropout import ByteDropout, ByteDropoutAttention
from features.models.losses import full_softmax_ce

EVENT_CODE = {t: n + 1 for n, t in enumerate(S.EVENT_TYPES)}  # 0 pads
PURCHASE_CODE = EVENT_CODE[S.EventType.PURCHASE.value]
GAP_EDGES_S = np.array([60 * 2.0 ** k for k in range(18)])  # 1 min .. ~180 days, doubling


@dataclass(frozen=True)
class SequenceParams:
    text: bool = True  # item = adapter(frozen text vector) [+ ID embedding]
    ids: bool = True  # learned item-ID embeddings
    events: bool = True  # event-type and time-gap embeddings
    dim: int = 64
    heads: int = 2
    layers: int = 2
    max_len: int = 50
    dropout: float = 0.2
    lr: float = 5e-3
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 3  # epochs without a better validation NDCG@10 (by min_delta) before stopping
    min_delta: float = 0.001  # an epoch must beat the best validation NDCG@10 by this much to count
    max_time_s: float = 600.0  # a safety cap; the report says when it, not patience, stopped training
    valid_users: int = 3000  # validation sample (users with a last new item); 0: all
    sampled_softmax_above: int = 50_000  # catalogs larger than this train with sampled softmax + logQ
    negatives: int = 4096  # sampled softmax: shared negatives per batch
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.text or self.ids):
            raise ValueError("sequence: at least one of text and ids must be true")
        if self.dim % self.heads:
            raise ValueError(f"sequence.dim ({self.dim}) must be a multiple of sequence.heads ({self.heads})")
        for name in ("dim", "heads", "layers", "max_len", "batch_size", "max_epochs", "patience", "negatives"):
            if getattr(self, name) < 1:
                raise ValueError(f"sequence.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1 or self.lr <= 0 or self.max_time_s <= 0:
            raise ValueError("sequence.dropout must be in [0, 1); sequence.lr and sequence.max_time_s > 0")


def sasrec_params() -> SequenceParams:
    """The ID-only SASRec baseline: the same model without text and event/time embeddings."""
    return SequenceParams(text=False, ids=True, events=False)


# --- data ---------------------------------------------------------------------------------------
@dataclass
class Seq:
    rows: list[int]  # catalog rows, oldest first
    types: list[int]  # EVENT_CODE
    ts: list[float]  # epoch seconds

    def bought(self) -> list[int]:
        """The rows this sequence purchased (what recommend and the evaluation exclude)."""
        return [r for r, c in zip(self.rows, self.types) if c == PURCHASE_CODE]

    def push(self, r: int, etype: str, t: float) -> None:
        """Append an interaction; a repeat of the newest item replaces it (its newest event kept)."""
        if self.rows and self.rows[-1] == r:
            self.types[-1], self.ts[-1] = EVENT_CODE[etype], t
        else:
            self.rows.append(r)
            self.types.append(EVENT_CODE[etype])
            self.ts.append(t)


def gap_bucket(gaps_s: np.ndarray) -> np.ndarray:
    """1..len(GAP_EDGES_S)+1 bucket of each gap (0 is padding); the first position's gap is 0 s."""
    return np.searchsorted(GAP_EDGES_S, np.maximum(gaps_s, 0.0)) + 1


def sequences(events: pl.DataFrame, row: dict[str, int]) -> dict[str, Seq]:
    """user -> positive item events in (ts, event_id) order, consecutive repeats of an item
    collapsed (the newest kept); items outside the catalog are skipped."""
    pos = (events.filter(pl.col(S.EVENT_TYPE).is_in(list(S.POSITIVE_EVENT_TYPES)) & pl.col(S.ITEM_ID).is_not_null())
           .sort([S.USER_ID, S.TS, S.EVENT_ID])
           .select(S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, (pl.col(S.TS).dt.epoch("us") / 1e6).alias("__t")))
    out: dict[str, Seq] = {}
    for (user,), g in pos.group_by(S.USER_ID, maintain_order=True):
        s = Seq([], [], [])
        for item, etype, t in g.select(S.ITEM_ID, S.EVENT_TYPE, "__t").iter_rows():
            r = row.get(item)
            if r is not None:
                s.push(r, etype, t)
        if s.rows:
            out[str(user)] = s
    return out


def history_seq(history: list[tuple[str, str, float]], row: dict[str, int]) -> Seq:
    """Serving's profile.recent_items (item_id, event_type, ts), NEWEST first -> a Seq, oldest first,
    built as `sequences` builds training sequences (positive events of catalog items)."""
    s = Seq([], [], [])
    for item, etype, t in reversed(history):
        r = row.get(item)
        if r is not None and etype in S.POSITIVE_EVENT_TYPES:
            s.push(r, etype, t)
    return s


def _pad_left(seqs: list[Seq], L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, L) ids (row + 1), event codes and gap buckets of each sequence's last L items, left-padded."""
    ids = np.zeros((len(seqs), L), np.int64)
    types, gaps = np.zeros_like(ids), np.zeros_like(ids)
    for b, s in enumerate(seqs):
        n = min(len(s.rows), L)
        if not n:
            continue
        ts = np.asarray(s.ts[-n - 1:] if len(s.ts) > n else [s.ts[-n]] + s.ts[-n:], np.float64)
        ids[b, L - n:] = np.asarray(s.rows[-n:]) + 1
        types[b, L - n:] = s.types[-n:]
        gaps[b, L - n:] = gap_bucket(np.diff(ts))
    return ids, types, gaps


def windows(seqs: list[Seq], L: int) -> tuple[np.ndarray, ...]:
    """Training windows: every sequence cut from its end into chunks of L + 1 items ->
    (ids, types, gaps, targets), each (W, L), left-padded; targets are the next item's id."""
    parts: list[Seq] = []
    targets: list[list[int]] = []
    for s in seqs:
        end = len(s.rows)
        while end >= 2:
            lo = max(0, end - L - 1)
            parts.append(Seq(s.rows[lo:end - 1], s.types[lo:end - 1], s.ts[lo:end - 1]))
            targets.append([r + 1 for r in s.rows[lo + 1:end]])
            end -= L
    ids, types, gaps = _pad_left(parts, L)
    y = np.zeros_like(ids)
    for b, t in enumerate(targets):
        y[b, L - len(t):] = t
    return ids, types, gaps, y


def split_valid(seqs: dict[str, Seq], p: SequenceParams, exclude_history: bool) -> tuple[list[Seq], list[Seq], np.ndarray]:
    """(training sequences, validation histories, validation targets): a user's last item is held
    out when they have another item before it and (when `exclude_history`) had not bought it before,
    as recommend and the evaluation exclude past purchases only (an item viewed, then bought, is
    the commonest next item of a log with views); a seeded sample of `valid_users` such users."""
    cand = [u for u, s in seqs.items() if len(s.rows) >= 2
            and not (exclude_history and s.rows[-1] in Seq(s.rows[:-1], s.types[:-1], s.ts[:-1]).bought())]
    rng = np.random.default_rng(p.seed)
    if p.valid_users and len(cand) > p.valid_users:
        cand = [cand[i] for i in sorted(rng.choice(len(cand), p.valid_users, replace=False))]
    held = set(cand)
    train, hist, tgt = [], [], []
    for u, s in seqs.items():
        if u in held:
            h = Seq(s.rows[:-1], s.types[:-1], s.ts[:-1])
            train.append(h)
            hist.append(h)
            tgt.append(s.rows[-1])
        else:
            train.append(s)
    return train, hist, np.asarray(tgt, np.int64)


# --- model --------------------------------------------------------------------------------------
def item_rows(E: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """E's rows named by `rows`, as an embedding lookup: E[rows]'s backward adds with atomic adds across
    threads in a varying order, so one seed gave other weights each run (docs/benchmarks.md)."""
    return F.embedding(rows, E)


class SequenceModel(torch.nn.Module):
    def __init__(self, n_items: int, text_dim: int, p: SequenceParams, text_vectors: np.ndarray | None = None) -> None:
        super().__init__()
        self.p = p
        d = p.dim
        self.n_items = n_items
        self.item_id = torch.nn.Embedding(n_items + 1, d, padding_idx=0) if p.ids else None
        if self.item_id is not None:
            torch.nn.init.normal_(self.item_id.weight, std=0.05 if not p.text else 0.01)
            with torch.no_grad():
                self.item_id.weight[0].zero_()
        self.adapter = torch.nn.Linear(text_dim, d, bias=False) if p.text else None
        tv = torch.zeros(n_items, text_dim) if text_vectors is None else torch.as_tensor(text_vectors, dtype=torch.float32)
        self.register_buffer("text_vectors", tv if p.text else torch.zeros(0, text_dim), persistent=False)
        self.pos = torch.nn.Embedding(p.max_len, d)
        self.etype = torch.nn.Embedding(len(EVENT_CODE) + 1, d, padding_idx=0) if p.events else None
        self.gap = torch.nn.Embedding(len(GAP_EDGES_S) + 2, d, padding_idx=0) if p.events else None
        layer = torch.nn.TransformerEncoderLayer(d, p.heads, dim_feedforward=2 * d, dropout=p.dropout,
                                                 batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, p.layers, enable_nested_tensor=False)
        for block in self.blocks.layers:  # the same dropouts, with masks from an eighth of the random draws
            with torch.random.fork_rng(devices=[]):  # torch's initial weights, and the generator untouched
                attn = ByteDropoutAttention(d, p.heads, p.dropout)
            attn.load_state_dict(block.self_attn.state_dict())
            block.self_attn = attn
            block.dropout, block.dropout1, block.dropout2 = (ByteDropout(p.dropout) for _ in range(3))
        self.norm = torch.nn.LayerNorm(d)
        self.drop = ByteDropout(p.dropout)
        self.register_buffer("causal", torch.triu(torch.ones(p.max_len, p.max_len, dtype=torch.bool), 1), persistent=False)

    def items(self, text_vectors: torch.Tensor | None = None, id_rows: torch.Tensor | None = None) -> torch.Tensor:
        """(N, d) item vectors: adapter(text) + ID embedding; `id_rows` maps each to an ID row + 1
        (0: none, a cold item). Defaults: the training catalog."""
        parts = []
        if self.adapter is not None:
            parts.append(self.adapter(self.text_vectors if text_vectors is None else text_vectors))
        if self.item_id is not None:
            parts.append(self.item_id.weight[1:] if id_rows is None else self.item_id(id_rows))
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def hidden(self, E: torch.Tensor, ids: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """(B, L, d) states for left-padded (B, L) ids (row + 1) over item matrix E (N, d)."""
        L = ids.shape[1]
        pad = (ids > 0).unsqueeze(-1).float()
        # The rows the batch names only (padding: row 0 times 0), never a copy of the whole catalog.
        x = item_rows(E, (ids - 1).clamp_min(0)) * pad * self.p.dim ** 0.5 + self.pos(torch.arange(L, device=ids.device))
        if self.etype is not None:
            x = x + self.etype(types) + self.gap(gaps)
        h = self.blocks(self.drop(x) * pad, mask=self.causal[:L, :L], is_causal=True)
        return self.norm(h) * pad

    def forward(self, ids, types, gaps, targets, neg: torch.Tensor | None = None, log_q: torch.Tensor | None = None):
        """Mean next-item cross-entropy: full softmax, or sampled softmax with logQ correction
        (`neg` (M,) sampled rows, `log_q` (N,) log of each item's sampling probability x M)."""
        E = self.items()
        h = self.hidden(E, ids, types, gaps)
        real = targets > 0
        hr, y = h[real], targets[real] - 1
        if neg is None:  # chunked (at most 1024 x N logits at once), gradients in the same pass
            return full_softmax_ce(hr, E, y)
        pos = (hr * item_rows(E, y)).sum(-1, keepdim=True) - log_q[y].unsqueeze(-1)
        negl = hr @ item_rows(E, neg).T - log_q[neg].unsqueeze(0)
        negl = negl.masked_fill(neg.unsqueeze(0) == y.unsqueeze(-1), float("-inf"))  # accidental hits
        logits = torch.cat([pos, negl], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.int64, device=y.device))


@torch.no_grad()
def user_vectors(model: SequenceModel, E: torch.Tensor, seqs: list[Seq]) -> np.ndarray:
    """(B, d) user vectors (the state after each sequence's newest item); zeros for empty ones."""
    ids, types, gaps = (torch.from_numpy(a).to(E.device) for a in _pad_left(seqs, model.p.max_len))
    out = model.hidden(E, ids, types, gaps)[:, -1]
    return out.float().cpu().numpy()


@torch.no_grad()
def valid_ndcg(model: SequenceModel, hist: list[Seq], targets: np.ndarray, exclude_history: bool, k: int = 10) -> float:
    """Mean NDCG@k of the held-out next item over the whole catalog."""
    if not len(targets):
        return float("nan")
    model.eval()
    E = model.items()
    total = 0.0
    for lo in range(0, len(hist), 512):
        u = torch.from_numpy(user_vectors(model, E, hist[lo:lo + 512])).to(E.device)
        s = u @ E.T
        t = torch.from_numpy(targets[lo:lo + 512]).to(E.device)
        if exclude_history:
            for b, h in enumerate(hist[lo:lo + 512]):
                s[b, h.bought()] = float("-inf")
        rank = (s > s.gather(1, t.unsqueeze(1))).sum(1)
        total += float(torch.where(rank < k, 1.0 / torch.log2(rank.float() + 2.0), torch.zeros(())).sum())
    return total / len(targets)


def fit(model: SequenceModel, train: list[Seq], hist: list[Seq], targets: np.ndarray, exclude_history: bool,
        rank: int = 0, world: int = 1, agree: Callable[[bool], bool] = lambda f: f,
        on_epoch: Callable[[dict, dict], None] | None = None, state: dict | None = None,
        opt: torch.optim.Optimizer | None = None, step_model: torch.nn.Module | None = None, log=print) -> dict:
    """Train until validation NDCG@10 has not improved for `patience` epochs (or max_epochs, or
    the max_time_s cap). `step_model` is what the loss runs through (the DDP wrapper under Ray
    Train); each rank trains on its share of the windows and validates on the same sample, so all
    ranks take the same decisions. `on_epoch(metrics, state)` reports (checkpoints). Returns the
    state (best weights in state["best_state"])."""
    p = model.p
    dev = next(model.parameters()).device
    step_model = step_model or model
    opt = opt or torch.optim.Adam(model.parameters(), lr=p.lr, betas=(0.9, 0.98))
    ids, types, gaps, y = windows(train, p.max_len)
    if not len(ids):
        raise ValueError("sequence model: no user has two or more items to learn a next item from")
    shard = np.arange(len(ids))[rank::world]
    sampled = model.n_items > p.sampled_softmax_above
    log_q = None
    q = None
    if sampled:  # unigram sampling of negatives; logQ = log(M * q)
        freq = np.bincount(y[y > 0] - 1, minlength=model.n_items).astype(np.float64) + 1.0
        q = freq / freq.sum()
        log_q = torch.from_numpy(np.log(q * p.negatives)).float().to(dev)
    st = state or {"epoch": 0, "best": None, "best_epoch": 0, "bad": 0, "train_s": 0.0, "curve": [], "best_state": None}
    rng = np.random.default_rng(p.seed + 7919 * rank)
    t0 = time.perf_counter() - st["train_s"]
    stopped_by = "max_epochs"
    while st["epoch"] < p.max_epochs:
        model.train()
        order = rng.permutation(shard)
        total, n = 0.0, 0
        for i in range(0, len(order), p.batch_size):
            b = order[i:i + p.batch_size]
            neg = torch.from_numpy(rng.choice(model.n_items, p.negatives, p=q)).to(dev) if sampled else None
            loss = step_model(*(torch.from_numpy(a[b]).to(dev) for a in (ids, types, gaps, y)), neg, log_q)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            n += len(b)
        st["epoch"] += 1
        score = valid_ndcg(model, hist, targets, exclude_history)
        st["train_s"] = time.perf_counter() - t0
        improved = st["best"] is None or score > st["best"] + p.min_delta
        if st["best"] is None or score > st["best"]:  # keep the best weights, however small the gain
            st.update(best=score, best_epoch=st["epoch"],
                      best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        st["bad"] = 0 if improved else st["bad"] + 1
        m = {"epoch": st["epoch"], "train_loss": total / max(n, 1), "valid_ndcg@10": score, "train_s": st["train_s"]}
        st["curve"].append({k: round(v, 5) if isinstance(v, float) else v for k, v in m.items()})
        if log and rank == 0:
            log(f"  epoch {st['epoch']}: loss {m['train_loss']:.3f} valid NDCG@10 {score:.4f} "
                f"(best {st['best']:.4f} at {st['best_epoch']}) {st['train_s']:.0f}s", flush=True)
        if on_epoch:
            on_epoch(m, st)
        if agree(st["bad"] >= p.patience):
            stopped_by = "patience"
            break
        if agree(st["train_s"] > p.max_time_s):
            stopped_by = "max_time_s"
            break
    st["stopped_by"] = stopped_by
    st["windows"] = int(len(ids))
    if st["best_state"] is not None:
        model.load_state_dict(st["best_state"])
    model.eval()
    return st


# --- inference (serving and evaluation) ---------------------------------------------------------
class SequenceScorer:
    """A trained model bound to a catalog's rows (retrieval's SequenceSource): an item vector per
    row (text-only for items the model never saw), user vectors from histories. Live upserts
    add or replace rows through `set_row`."""

    def __init__(self, model: SequenceModel, item_ids: list[str], catalog_ids: list[str], text_vectors: np.ndarray):
        self.model = model.eval()
        self._id_row = {i: n for n, i in enumerate(item_ids)}
        self._buf = self._item_vectors(catalog_ids, text_vectors)  # rows beyond len(vectors): room to grow
        self.vectors = self._buf
        self._E = torch.from_numpy(self.vectors)

    @torch.no_grad()
    def _item_vectors(self, ids: list[str], text_vectors: np.ndarray) -> np.ndarray:
        id_rows = torch.tensor([self._id_row.get(i, -1) + 1 for i in ids], dtype=torch.int64)
        tv = torch.as_tensor(np.asarray(text_vectors, np.float32).reshape(len(ids), -1)) if self.model.adapter is not None else None
        return self.model.items(tv, id_rows).numpy().astype(np.float32)

    def set_row(self, r: int, item_id: str, text_vector: np.ndarray) -> None:
        """Replace row r, or append it (r == len(vectors)); appends grow the storage by doubling,
        so adding items one at a time costs O(1) each, not a copy of every row."""
        v = self._item_vectors([item_id], text_vector[None, :])
        n = len(self.vectors)
        if r == n:
            if n == len(self._buf):
                grown = np.zeros((max(2 * n, 16), self._buf.shape[1]), np.float32)
                grown[:n] = self._buf[:n]
                self._buf = grown
            self._buf[n] = v[0]
            self.vectors = self._buf[: n + 1]
            self._E = torch.from_numpy(self.vectors)
        else:
            self.vectors[r] = v[0]  # (a view: _E sees it)

    def user_vector_of(self, seq: Seq) -> np.ndarray | None:
        return user_vectors(self.model, self._E, [seq])[0] if seq.rows else None

    def user_vector(self, history: list[tuple[str, str, float]], row: dict[str, int]) -> np.ndarray | None:
        """From serving's profile.recent_items (newest first) and the catalog's row map."""
        return self.user_vector_of(history_seq(history, row))
