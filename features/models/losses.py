"""Contrastive losses for the two-tower encoder: pure tensor functions."""

from __future__ import annotations

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
