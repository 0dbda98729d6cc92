"""Contrastive losses for the two-tower encoder: pure tensor functions."""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F


def info_nce(
    query_emb: torch.Tensor,
    item_emb: torch.Tensor,
    temperature: float = 0.05,
    hard_neg_emb: torch.Tensor | None = None,
    item_keys: torch.Tensor | None = None,
    query_keys: torch.Tensor | None = None,
    item_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch softmax contrastive loss (InfoNCE), mean over the batch.

    query_emb (B, d) and item_emb (B, d): row i of each is a positive pair; every other item in
    the batch is a negative for query i. hard_neg_emb (B, H, d), optional: extra negatives per
    query (e.g. co-purchased or BM25 neighbours that are not the target). item_keys (B,),
    optional: integer item ids; another in-batch item with the same key as query i's target is
    the same product, not a negative, and is masked out of query i's softmax. query_keys (B,),
    optional: integer anchor ids; rows j with the same anchor as row i (one basket bought after
    one history gives several targets for one text) are all positives of i, so their items are
    masked out of i's softmax too.
    item_log_q (B,), optional: log of each in-batch item's sampling probability (its share of the
    training targets). Popular items turn up as in-batch negatives far more often than a full
    softmax would weigh them, which teaches the model to push them down; subtracting log q from
    their logits (the logQ correction of sampled softmax) removes that bias.
    Embeddings are expected L2-normalised, so logits are cosine / temperature.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if query_emb.shape != item_emb.shape or query_emb.dim() != 2:
        raise ValueError(f"query_emb {tuple(query_emb.shape)} and item_emb {tuple(item_emb.shape)} must both be (B, d)")
    logits = query_emb @ item_emb.T / temperature  # (B, B)
    if item_log_q is not None:
        logits = logits - item_log_q[None, :]
    same = torch.zeros_like(logits, dtype=torch.bool)
    if item_keys is not None:
        same |= item_keys[:, None] == item_keys[None, :]
    if query_keys is not None:
        same |= query_keys[:, None] == query_keys[None, :]
    if item_keys is not None or query_keys is not None:
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    if hard_neg_emb is not None:
        if hard_neg_emb.dim() != 3 or hard_neg_emb.shape[0] != query_emb.shape[0]:
            raise ValueError(f"hard_neg_emb must be (B, H, d), got {tuple(hard_neg_emb.shape)}")
        hard = torch.einsum("bd,bhd->bh", query_emb, hard_neg_emb) / temperature  # (B, H)
        logits = torch.cat([logits, hard], dim=1)  # (B, B + H)
    target = torch.arange(query_emb.shape[0], device=query_emb.device)
    return F.cross_entropy(logits, target)


def full_softmax(query_emb: torch.Tensor, catalog_emb: torch.Tensor, target_idx: torch.Tensor,
                 temperature: float = 0.05) -> torch.Tensor:
    """Softmax cross-entropy over the WHOLE catalog, mean over the batch.

    query_emb (B, d), catalog_emb (N, d) (fixed item vectors, no gradient needed), target_idx (B,)
    row of each query's target in catalog_emb. No sampled negatives, so no popularity bias to
    correct; affordable when the item tower is frozen and N fits in memory.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if query_emb.dim() != 2 or catalog_emb.dim() != 2 or query_emb.shape[1] != catalog_emb.shape[1]:
        raise ValueError(f"query_emb {tuple(query_emb.shape)} and catalog_emb {tuple(catalog_emb.shape)} must be (B, d), (N, d)")
    return F.cross_entropy(query_emb @ catalog_emb.T / temperature, target_idx)


_WORKSPACE = threading.local()


def _workspace(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """A (rows, cols) scratch matrix kept per thread between calls: a fresh tensor of that size
    comes from the OS zero-filled page by page on first touch, which cost more than the matmul
    writing into it (16 vs 4 ms for 2,500 x 3,940 fp32 logits on 2 CPUs)."""
    buf = getattr(_WORKSPACE, "buf", None)
    if buf is None or buf.numel() < rows * cols or buf.dtype != like.dtype or buf.device != like.device:
        buf = torch.empty(rows * cols, dtype=like.dtype, device=like.device)
        _WORKSPACE.buf = buf
    return buf[:rows * cols].view(rows, cols)


class _FullSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy of h @ E.T against rows y, computed chunk by chunk with its
    gradients in the same pass (the "fused linear cross-entropy" of large-vocabulary training).

    Autograd's version allocates each (C, N) chunk of logits, keeps it for log_softmax's backward,
    allocates a zero-filled (C, N) gradient for nll_loss, and reads and writes the logits four more
    times; here one reused (C, N) workspace holds the logits, becomes the softmax in place, then
    its gradient (softmax - onehot), which goes straight into two matmuls. Same maths: a unit test
    checks loss and gradients against autograd."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, E: torch.Tensor, y: torch.Tensor, chunk: int) -> torch.Tensor:
        n = max(len(h), 1)
        need = ctx.needs_input_grad
        gh = torch.empty_like(h) if need[0] else None
        gE = torch.zeros_like(E) if need[1] else None
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        Et = E.T.contiguous()  # (d, N): a plain (C, d) x (d, N) product, faster than a transposed operand
        buf = _workspace(min(chunk, len(h)), E.shape[0], h)
        for lo in range(0, len(h), chunk):
            hc, yc = h[lo:lo + chunk], y[lo:lo + chunk]
            z = buf[:len(hc)]
            torch.mm(hc, Et, out=z)  # (C, N) logits
            target = z.gather(1, yc.unsqueeze(1)).squeeze(1)
            m = z.amax(dim=1, keepdim=True)
            z.sub_(m).exp_()
            s = z.sum(dim=1, keepdim=True)
            total += (m.squeeze(1) + s.squeeze(1).log() - target).sum(dtype=torch.float64)
            if gh is None and gE is None:
                continue
            z.div_(s)  # softmax
            z[torch.arange(len(yc), device=z.device), yc] -= 1.0  # d loss / d logits
            if gh is not None:
                torch.mm(z, E, out=gh[lo:lo + chunk])
            if gE is not None:
                gE.addmm_(z.T, hc)
        ctx.save_for_backward(gh, gE)
        ctx.n = n
        return (total / n).to(h.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gh, gE = ctx.saved_tensors
        scale = grad / ctx.n
        return (None if gh is None else gh * scale, None if gE is None else gE * scale, None, None)


def full_softmax_ce(h: torch.Tensor, E: torch.Tensor, y: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of the softmax over all N rows of E (N, d) for states h (P, d) and target
    rows y (P,), chunked over P so that at most (chunk, N) logits exist at once; the gradients of h
    and E are computed in the forward pass (see _FullSoftmaxCE)."""
    if h.dim() != 2 or E.dim() != 2 or h.shape[1] != E.shape[1]:
        raise ValueError(f"h {tuple(h.shape)} and E {tuple(E.shape)} must be (P, d) and (N, d)")
    if y.shape != (h.shape[0],):
        raise ValueError(f"y {tuple(y.shape)} must be ({h.shape[0]},): one target row per state")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return _FullSoftmaxCE.apply(h, E, y, chunk)
