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
) -> torch.Tensor:
    """In-batch softmax contrastive loss (InfoNCE), mean over the batch.

    query_emb (B, d) and item_emb (B, d): row i of each is a positive pair; every other item in
    the batch is a negative for query i. hard_neg_emb (B, H, d), optional: extra negatives per
    query (e.g. co-purchased or BM25 neighbours that are not the target). item_keys (B,),
    optional: integer item ids; another in-batch item with the same key as query i's target is
    the same product, not a negative, and is masked out of query i's softmax.
    Embeddings are expected L2-normalised, so logits are cosine / temperature.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if query_emb.shape != item_emb.shape or query_emb.dim() != 2:
        raise ValueError(f"query_emb {tuple(query_emb.shape)} and item_emb {tuple(item_emb.shape)} must both be (B, d)")
    logits = query_emb @ item_emb.T / temperature  # (B, B)
    if item_keys is not None:
        same = item_keys[:, None] == item_keys[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    if hard_neg_emb is not None:
        if hard_neg_emb.dim() != 3 or hard_neg_emb.shape[0] != query_emb.shape[0]:
            raise ValueError(f"hard_neg_emb must be (B, H, d), got {tuple(hard_neg_emb.shape)}")
        hard = torch.einsum("bd,bhd->bh", query_emb, hard_neg_emb) / temperature  # (B, H)
        logits = torch.cat([logits, hard], dim=1)  # (B, B + H)
    target = torch.arange(query_emb.shape[0], device=query_emb.device)
    return F.cross_entropy(logits, target)
