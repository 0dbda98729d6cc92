"""The feature build as plain functions: shared steps, and a single-process reference run.

`jobs/build_features.py` runs these steps on Ray Data; `build_local` runs the same steps on whole
tables in one process. The local run is the oracle the Ray job is tested against, and the
baseline the benchmark compares it with.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa

from features.data import als as ALS
from features.data import cooccurrence as CO
from features.data import ease as E
from features.data import schema as S
from features.data import transforms as T
from features.data.validate import ValidationConfig, split_duplicates, validate_events, validate_items


@dataclass(frozen=True)
class SplitConfig:
    """Temporal split of the training examples. Explicit ISO instants win over day counts."""

    valid_days: float = 30.0
    test_days: float = 30.0
    valid_start: str | None = None
    test_start: str | None = None


@dataclass(frozen=True)
class FeatureTables:
    items: pl.DataFrame
    users: pl.DataFrame
    cooccurrence: pl.DataFrame
    ease: pl.DataFrame | None  # EASE neighbours (None: disabled or too little data)
    als: pl.DataFrame | None  # ALS item factors (None: disabled or too little data)
    examples: pl.DataFrame
    events_quarantine: pl.DataFrame
    items_quarantine: pl.DataFrame
    as_of: dt.datetime
    cutoffs: T.Cutoffs
    counts: dict = field(default_factory=dict)


def parse_instant(text: str | None, key: str) -> dt.datetime | None:
    """ISO 8601 -> aware UTC datetime (naive means UTC); ValueError naming `key` otherwise."""
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{key}: {text!r} is not an ISO 8601 timestamp (e.g. 2011-11-09T00:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def resolve_cutoffs(split: SplitConfig, max_ts: dt.datetime) -> T.Cutoffs:
    return T.default_cutoffs(
        max_ts, split.valid_days, split.test_days,
        parse_instant(split.valid_start, "split.valid_start"), parse_instant(split.test_start, "split.test_start"),
    )


def catalog_columns(items: pl.DataFrame) -> pl.DataFrame:
    """The slice of the catalog that per-user transforms need (broadcast to every worker)."""
    return items.select(S.ITEM_ID, S.TITLE, S.CATEGORY, S.PRICE)


def user_block_outputs(
    events: pl.DataFrame, catalog: pl.DataFrame, p: T.FeatureParams, as_of: dt.datetime, cutoffs: T.Cutoffs
) -> dict[str, pl.DataFrame]:
    """Every per-user-partition output of one batch holding whole users."""
    ev = T.with_sessions(events.filter(pl.col(S.TS) <= pl.lit(as_of).dt.cast_time_unit("us")), p.session_gap_s)
    return {
        "users": T.user_features(ev, catalog, p, as_of),
        "item_partials": T.item_partials(ev, p, as_of),
        "cooc_partials": CO.cooccurrence_partials(ev, CO.item_codes(catalog.get_column(S.ITEM_ID)), p),
        "ease_pairs": E.user_item_pairs(ev),
        "examples": T.training_examples(ev, catalog, p, cutoffs),
    }


def build_local(
    events_raw: pa.Table,
    items_raw: pa.Table,
    vcfg: ValidationConfig,
    p: T.FeatureParams,
    split: SplitConfig,
    as_of: str | None = None,
) -> FeatureTables:
    """Run the whole feature build in this process on in-memory tables."""
    items, items_bad = validate_items(items_raw, vcfg)
    ok, bad = validate_events(events_raw, items.get_column(S.ITEM_ID), vcfg)
    ok, dups = split_duplicates(ok)
    quarantine = pl.concat([bad, dups], how="vertical_relaxed")
    if ok.is_empty():
        raise ValueError("no valid events left after validation; see the quarantine counts")
    max_ts = ok.get_column(S.TS).max()
    as_of_ts = parse_instant(as_of, "features.as_of") or max_ts
    cutoffs = resolve_cutoffs(split, min(max_ts, as_of_ts))
    cat = catalog_columns(items)
    out = user_block_outputs(ok, cat, p, as_of_ts, cutoffs)
    item_feats = T.item_features(T.combine_item_partials(out["item_partials"]), items, p)
    codes = CO.item_codes(items.get_column(S.ITEM_ID))
    cooc = CO.cooccurrence_top(out["cooc_partials"], item_feats.select(S.ITEM_ID, S.N_SESSIONS), codes, p)
    ease, ease_info = E.ease_table(out["ease_pairs"], p)
    als, als_info = ALS.als_table(out["ease_pairs"], p)
    return FeatureTables(
        items=item_feats,
        users=out["users"],
        cooccurrence=cooc,
        ease=ease,
        als=als,
        examples=out["examples"],
        events_quarantine=quarantine,
        items_quarantine=items_bad,
        as_of=as_of_ts,
        cutoffs=cutoffs,
        counts={"events_in": events_raw.num_rows, "events_valid": ok.height, "items_in": items_raw.num_rows,
                "items_valid": items.height, "ease": ease_info, "als": als_info},
    )
