"""Item-to-item co-occurrence in polars: pairs of items a shopper interacted with in one session
(and, for logs without baskets, consecutive single-item sessions of a user; see `_sequence_pairs`),
counted per batch (`cooccurrence_partials`, mergeable across Ray Data blocks), then normalised and
cut to each item's top neighbours (`cooccurrence_top`).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from features.data import schema as S
from features.data.transforms import SESSION_KEY, FeatureParams, positive_expr

DENSE_PAIR_CELLS = 64_000_000  # count pairs in a dense n*n array up to this size (~512 MB)


def item_codes(item_ids: pl.Series) -> pl.DataFrame:
    """(item_id, __code): a dense u32 code per catalog item, in item_id order. Pair partials use
    codes so the shuffle between partial and final co-occurrence moves 16-byte rows, not strings."""
    return pl.DataFrame({S.ITEM_ID: item_ids.unique().sort()}).with_row_index("__code")


def cooccurrence_partials(events: pl.DataFrame, codes: pl.DataFrame, p: FeatureParams) -> pl.DataFrame:
    """(item_a, item_b, count) with u32 item codes (see `item_codes`): the number of sessions of
    this batch in which both items had a positive event. Both directions are emitted.

    Each session contributes its `cooc_max_items_per_session` most recent distinct items (ties
    broken by item code, so the result is deterministic). When the catalog is small enough the
    pairs are counted with a dense bincount, an order of magnitude faster than a group-by.
    """
    sessions = (
        events.filter(positive_expr())
        .select(S.USER_ID, SESSION_KEY, S.ITEM_ID, S.TS)
        .join(codes, on=S.ITEM_ID)
        .group_by(S.USER_ID, SESSION_KEY, "__code")
        .agg(pl.col(S.TS).max().alias("__last"))
        .group_by(S.USER_ID, SESSION_KEY)
        .agg(
            pl.col("__code")
            .sort_by(["__last", "__code"], descending=[True, False])
            .head(p.cooc_max_items_per_session),
            pl.col("__last").min().alias("__start"),
            pl.col("__last").max().alias("__end"),
        )
    )
    half = (
        sessions.filter(pl.col("__code").list.len() > 1)
        .select(pl.col("__code").alias(S.ITEM_A), pl.col("__code").alias(S.ITEM_B))
        .explode(S.ITEM_A)
        .explode(S.ITEM_B)
        .filter(pl.col(S.ITEM_A) < pl.col(S.ITEM_B))
    )
    if p.cooc_sequence_window_s > 0:
        half = pl.concat([half, _sequence_pairs(sessions, p.cooc_sequence_window_s)])
    n = codes.height
    if n * n <= DENSE_PAIR_CELLS:
        a = half.get_column(S.ITEM_A).to_numpy().astype(np.int64)
        b = half.get_column(S.ITEM_B).to_numpy().astype(np.int64)
        counts = np.bincount(a * n + b, minlength=n * n)
        cells = np.flatnonzero(counts)
        pairs = pl.DataFrame(
            {S.ITEM_A: (cells // n).astype(np.uint32), S.ITEM_B: (cells % n).astype(np.uint32),
             S.COUNT: counts[cells].astype(np.int64)},
            schema=PAIR_SCHEMA,
        )
    else:
        pairs = half.group_by(S.ITEM_A, S.ITEM_B).agg(pl.len().cast(pl.Int64).alias(S.COUNT))
    mirrored = pairs.select(pl.col(S.ITEM_B).alias(S.ITEM_A), pl.col(S.ITEM_A).alias(S.ITEM_B), S.COUNT)
    return pl.concat([pairs, mirrored]).cast(PAIR_SCHEMA)  # type: ignore[arg-type]


PAIR_SCHEMA = {S.ITEM_A: pl.UInt32, S.ITEM_B: pl.UInt32, S.COUNT: pl.Int64}


def _sequence_pairs(sessions: pl.DataFrame, window_s: float) -> pl.DataFrame:
    """(item_a < item_b) pairs for logs without baskets: a session with ONE distinct item is paired
    with the most recent item of the same user's previous session when it ended at most `window_s`
    earlier (consecutive interactions, as item-to-item recommenders count them). Sessions with
    several items are left to the in-session pairs."""
    seq = (
        sessions.sort([S.USER_ID, "__start", SESSION_KEY])
        .with_columns(
            pl.col("__code").list.first().shift(1).over(S.USER_ID).alias("__prev"),
            pl.col("__end").shift(1).over(S.USER_ID).alias("__prev_end"),
        )
        .filter(
            (pl.col("__code").list.len() == 1)
            & pl.col("__prev").is_not_null()
            & ((pl.col("__start") - pl.col("__prev_end")).dt.total_microseconds() <= window_s * 1e6)
        )
        .select(pl.col("__code").list.first().alias("__cur"), "__prev")
        .filter(pl.col("__cur") != pl.col("__prev"))
    )
    return seq.select(pl.min_horizontal("__cur", "__prev").alias(S.ITEM_A),
                      pl.max_horizontal("__cur", "__prev").alias(S.ITEM_B))


def cooccurrence_top(
    parts: pl.DataFrame, item_sessions: pl.DataFrame, codes: pl.DataFrame, p: FeatureParams
) -> pl.DataFrame:
    """Top-M neighbours per item_a by cosine score count / sqrt(n_sessions_a * n_sessions_b).

    `parts` are coded partials; `item_sessions` holds (item_id, n_sessions). Pairs seen fewer
    than cooc_min_count times are dropped as noise. Ties break by count, then item_b, so the
    output is deterministic. Returns item ids, not codes.
    """
    ns = codes.join(item_sessions.select(S.ITEM_ID, S.N_SESSIONS), on=S.ITEM_ID, how="left")
    ns = ns.select(pl.col("__code"), pl.col(S.ITEM_ID), pl.col(S.N_SESSIONS).cast(pl.Float64))
    df = (
        parts.group_by(S.ITEM_A, S.ITEM_B)
        .agg(pl.col(S.COUNT).sum())
        .filter(pl.col(S.COUNT) >= p.cooc_min_count)
        .join(ns.rename({"__code": S.ITEM_A, S.ITEM_ID: "__ida", S.N_SESSIONS: "__na"}), on=S.ITEM_A, how="left")
        .join(ns.rename({"__code": S.ITEM_B, S.ITEM_ID: "__idb", S.N_SESSIONS: "__nb"}), on=S.ITEM_B, how="left")
        .with_columns((pl.col(S.COUNT) / (pl.col("__na") * pl.col("__nb")).sqrt()).alias(S.SCORE))
        .sort(["__ida", S.SCORE, S.COUNT, "__idb"], descending=[False, True, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("__ida").alias(S.RANK))
        .filter(pl.col(S.RANK) <= p.cooc_top_m)
    )
    return df.select(pl.col("__ida").alias(S.ITEM_A), pl.col("__idb").alias(S.ITEM_B), S.COUNT, S.SCORE, S.RANK)


# --------------------------------------------------------------------------------------------
# training examples
# --------------------------------------------------------------------------------------------
