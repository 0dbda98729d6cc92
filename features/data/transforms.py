"""Pure polars batch transforms: events and items in, feature tables out.

The Ray job (jobs/build_features.py) and the single-process pipeline (features/data/pipeline.py) call
these same functions; Ray only decides which rows land in which batch. Functions whose name ends
in `_partials` are *map-side* aggregates: they assume a batch holds every event of each of its
users (the job partitions by user_id), and their outputs combine by sum/min/max across batches.

Time: `as_of` is the instant the features describe. Decayed weights use the age `as_of - ts` in
days; `w * 0.5 ** (age_days / half_life_days)`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import polars as pl

from features.data import schema as S
from features.data.text import history_entry_expr, item_text_expr, title_text_expr

SESSION_KEY = "session_key"
_ROW = "__row"  # position of an event in the batch's (user, ts, event_id) order
_START = "__gstart"  # first row of the ts group (events sharing a user and ts form one group)

# partial item aggregates (combined by sum/min/max)
_P_PRICE_N = "__price_n"
_P_PRICE_MEAN = "__price_mean"
_P_PRICE_M2 = "__price_m2"  # sum of squared deviations from the mean (Chan et al. combine)


def default_event_weights() -> dict[str, float]:
    return {
        S.EventType.SEARCH.value: 0.0,
        S.EventType.VIEW.value: 1.0,
        S.EventType.CLICK.value: 2.0,
        S.EventType.ADD_TO_CART.value: 3.0,
        S.EventType.PURCHASE.value: 4.0,
        S.EventType.RETURN.value: 0.0,
    }


@dataclass(frozen=True)
class FeatureParams:
    """How features are computed. Defaults suit a shop with sessions of minutes and a catalog
    that changes over weeks."""

    half_lives_days: tuple[float, ...] = (1.0, 7.0, 30.0)
    event_weights: dict[str, float] = field(default_factory=default_event_weights)
    last_n_interactions: int = 50
    recent_queries: int = 10
    top_categories: int = 10
    affinity_half_life_days: float = 30.0
    session_gap_s: float = 1800.0  # inactivity that starts a new session when session_id is null
    cooc_max_items_per_session: int = 50  # caps the quadratic pair blow-up of huge baskets
    cooc_top_m: int = 20
    cooc_min_count: int = 2
    # Logs without sessions or baskets (one item per session): pair a single-item session with the
    # user's previous item when it came at most this long before; 0 counts in-session pairs only.
    cooc_sequence_window_s: float = 7 * 86400.0
    # EASE item-to-item weights (features/data/ease.py): the items with most shoppers it covers
    # (0: off; the fit is dense, ~N^2 x 8 bytes x 3 and N^3 time), neighbours kept per item, and
    # lambda (null: chosen on a leave-newest-out holdout of the shoppers).
    ease_max_items: int = 10_000
    ease_top_m: int = 20
    ease_lambda: float | None = None
    # ALS factors for the ranker's `als` and `als_rank` features (features/data/als.py): factors
    # (0: off), regularization, and the items with most shoppers it covers (serving holds N x factors floats).
    als_factors: int = 128
    als_regularization: float = 10.0
    als_max_items: int = 100_000
    history_len: int = 10  # entries in a history text
    query_window_s: float = 1800.0  # a search explains positive events up to this long after it

    def __post_init__(self) -> None:
        unknown = sorted(set(self.event_weights) - set(S.EVENT_TYPES))
        if unknown:
            raise ValueError(
                f"features.event_weights: unknown event type(s) {unknown}; allowed: {', '.join(S.EVENT_TYPES)}"
            )
        if not self.half_lives_days or any(h <= 0 for h in self.half_lives_days):
            raise ValueError(f"features.half_lives_days must be positive numbers, got {self.half_lives_days}")
        for name in ("last_n_interactions", "recent_queries", "top_categories", "cooc_max_items_per_session",
                     "cooc_top_m", "history_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"features.{name} must be >= 1, got {getattr(self, name)}")
        if self.ease_max_items < 0 or self.ease_top_m < 1:
            raise ValueError(f"features.ease_max_items must be >= 0 (0: off) and features.ease_top_m >= 1, "
                             f"got {self.ease_max_items}, {self.ease_top_m}")
        if self.ease_lambda is not None and not self.ease_lambda > 0:
            raise ValueError(f"features.ease_lambda must be > 0, or null to choose it on a holdout; got {self.ease_lambda}")
        if self.als_factors < 0 or self.als_max_items < 0 or not self.als_regularization > 0:
            raise ValueError(f"features.als_factors and features.als_max_items must be >= 0 (0: off / no cap) and "
                             f"features.als_regularization > 0, got {self.als_factors}, {self.als_max_items}, "
                             f"{self.als_regularization}")
        if self.cooc_sequence_window_s < 0:
            raise ValueError(f"features.cooc_sequence_window_s must be >= 0 (0: in-session pairs only), "
                             f"got {self.cooc_sequence_window_s}")

    def weight(self, event_type: str) -> float:
        return self.event_weights.get(event_type, default_event_weights()[event_type])


@dataclass(frozen=True)
class Cutoffs:
    """Temporal split: train < valid_start <= valid < test_start <= test."""

    valid_start: dt.datetime
    test_start: dt.datetime

    def __post_init__(self) -> None:
        if self.valid_start > self.test_start:
            raise ValueError(f"split: valid_start {self.valid_start} is after test_start {self.test_start}")


def _weight_expr(p: FeatureParams) -> pl.Expr:
    weights = {t: p.weight(t) for t in S.EVENT_TYPES}
    return pl.col(S.EVENT_TYPE).replace_strict(weights, default=0.0, return_dtype=pl.Float64)


def _age_days(as_of: dt.datetime) -> pl.Expr:
    return (pl.lit(as_of).dt.cast_time_unit("us") - pl.col(S.TS)).dt.total_microseconds() / 86_400e6


def positive_expr() -> pl.Expr:
    return pl.col(S.EVENT_TYPE).is_in(list(S.POSITIVE_EVENT_TYPES)) & pl.col(S.ITEM_ID).is_not_null()


def _forward_fill_at(flag: pl.Expr, value: pl.Expr) -> pl.Expr:
    return pl.when(flag).then(value).forward_fill()


def with_sessions(events: pl.DataFrame, gap_s: float) -> pl.DataFrame:
    """Sort by (user, ts, event_id) and add `session_key`: the session_id when given, else
    user_id#n where n counts the user's inactivity gaps longer than `gap_s`.

    Written with shifts and cumulative sums over the sorted frame instead of windows over the
    string user key: same result, several times faster.
    """
    ev = events.sort([S.USER_ID, S.TS, S.EVENT_ID])
    new_user = (pl.col(S.USER_ID) != pl.col(S.USER_ID).shift(1)).fill_null(True)
    gap = ((pl.col(S.TS) - pl.col(S.TS).shift(1)).dt.total_microseconds() > gap_s * 1e6).fill_null(True)
    n = (new_user | gap).cast(pl.UInt32).cum_sum()
    local_n = n - _forward_fill_at(new_user, n)
    key = pl.coalesce(pl.col(S.SESSION_ID), pl.concat_str([pl.col(S.USER_ID), pl.lit("#"), local_n.cast(pl.String)]))
    return ev.with_columns(key.alias(SESSION_KEY))


# --------------------------------------------------------------------------------------------
# users
# --------------------------------------------------------------------------------------------
def user_features(events: pl.DataFrame, catalog: pl.DataFrame, p: FeatureParams, as_of: dt.datetime) -> pl.DataFrame:
    """One row per user in `events` (which must hold all of each user's events, with sessions).

    Columns: user_id; recent_items / recent_event_types / recent_ts (last N item events, newest
    first); recent_queries (newest first); n_<type> counts; n_sessions; first_seen/last_seen;
    category_affinity (top categories, decayed weights normalised to sum 1); price_log_mean /
    price_log_std (log1p price of positive interactions; event price, else catalog price).
    `catalog` needs item_id, category, price.
    """
    ev = events.sort([S.USER_ID, S.TS, S.EVENT_ID])
    users = ev.group_by(S.USER_ID, maintain_order=True).agg(
        *[(pl.col(S.EVENT_TYPE) == t).sum().cast(pl.Int64).alias(S.n_col(t)) for t in S.EVENT_TYPES],
        pl.col(SESSION_KEY).n_unique().cast(pl.Int64).alias(S.N_SESSIONS),
        pl.col(S.TS).min().alias(S.FIRST_SEEN),
        pl.col(S.TS).max().alias(S.LAST_SEEN),
    )
    inter = ev.filter(pl.col(S.ITEM_ID).is_not_null() & (pl.col(S.EVENT_TYPE) != S.EventType.SEARCH.value))
    n = p.last_n_interactions
    recent = inter.group_by(S.USER_ID, maintain_order=True).agg(
        pl.col(S.ITEM_ID).reverse().head(n).alias(S.RECENT_ITEMS),
        pl.col(S.EVENT_TYPE).reverse().head(n).alias(S.RECENT_EVENT_TYPES),
        pl.col(S.TS).reverse().head(n).alias(S.RECENT_TS),
    )
    queries = (
        ev.filter(pl.col(S.EVENT_TYPE) == S.EventType.SEARCH.value)
        .group_by(S.USER_ID, maintain_order=True)
        .agg(pl.col(S.QUERY).reverse().head(p.recent_queries).alias(S.RECENT_QUERIES))
    )
    pos = ev.filter(positive_expr()).join(
        catalog.select(S.ITEM_ID, S.CATEGORY, pl.col(S.PRICE).alias("__cat_price")), on=S.ITEM_ID, how="left"
    )
    w = _weight_expr(p) * (0.5 ** (_age_days(as_of) / p.affinity_half_life_days))
    cat = (
        pos.filter(pl.col(S.CATEGORY).is_not_null())
        .with_columns(w.alias("__w"))
        .group_by(S.USER_ID, S.CATEGORY)
        .agg(pl.col("__w").sum())
        .filter(pl.col("__w") > 0)
        .with_columns((pl.col("__w") / pl.col("__w").sum().over(S.USER_ID)).alias(S.SCORE))
        .sort([S.USER_ID, S.SCORE, S.CATEGORY], descending=[False, True, False])
        .group_by(S.USER_ID, maintain_order=True)
        .agg(pl.struct(S.CATEGORY, S.SCORE).head(p.top_categories).alias(S.CATEGORY_AFFINITY))
    )
    log_price = pl.coalesce(pl.col(S.PRICE), pl.col("__cat_price")).log1p()
    price = (
        pos.with_columns(log_price.alias("__lp"))
        .filter(pl.col("__lp").is_not_null())
        .group_by(S.USER_ID)
        .agg(
            pl.col("__lp").mean().alias(S.PRICE_AFFINITY_LOG_MEAN),
            pl.col("__lp").std(ddof=0).alias(S.PRICE_AFFINITY_LOG_STD),
        )
    )
    out = users
    for part in (recent, queries, cat, price):
        out = out.join(part, on=S.USER_ID, how="left", maintain_order="left")
    empty_list = {S.RECENT_ITEMS, S.RECENT_EVENT_TYPES, S.RECENT_TS, S.RECENT_QUERIES, S.CATEGORY_AFFINITY}
    return out.with_columns(
        [pl.col(c).fill_null(pl.lit([], dtype=out.schema[c])) for c in empty_list]
    ).sort(S.USER_ID)


# --------------------------------------------------------------------------------------------
# items
# --------------------------------------------------------------------------------------------
def item_partials(events: pl.DataFrame, p: FeatureParams, as_of: dt.datetime) -> pl.DataFrame:
    """Per-item partial aggregates of one batch; combine with `combine_item_partials`.

    n_users and n_sessions are additive because a batch holds all events of its users.
    """
    ev = events.filter(pl.col(S.ITEM_ID).is_not_null())
    age = _age_days(as_of)
    w = _weight_expr(p)
    return ev.group_by(S.ITEM_ID).agg(
        *[(pl.col(S.EVENT_TYPE) == t).sum().cast(pl.Int64).alias(S.n_col(t)) for t in S.EVENT_TYPES],
        *[(w * 0.5 ** (age / h)).sum().alias(S.half_life_col(h)) for h in p.half_lives_days],
        pl.col(S.USER_ID).n_unique().cast(pl.Int64).alias(S.N_USERS),
        pl.struct(S.USER_ID, SESSION_KEY).n_unique().cast(pl.Int64).alias(S.N_SESSIONS),
        pl.col(S.TS).min().alias(S.FIRST_SEEN),
        pl.col(S.TS).max().alias(S.LAST_SEEN),
        pl.col(S.PRICE).count().cast(pl.Int64).alias(_P_PRICE_N),
        pl.col(S.PRICE).mean().fill_null(0.0).alias(_P_PRICE_MEAN),
        ((pl.col(S.PRICE) - pl.col(S.PRICE).mean()) ** 2).sum().alias(_P_PRICE_M2),
        pl.col(S.PRICE).min().alias(S.PRICE_MIN),
        pl.col(S.PRICE).max().alias(S.PRICE_MAX),
    )


def combine_item_partials(parts: pl.DataFrame) -> pl.DataFrame:
    """Merge partial rows of the same item (sum counts and weights, min/max times and prices)."""
    mins = {S.FIRST_SEEN, S.PRICE_MIN}
    maxs = {S.LAST_SEEN, S.PRICE_MAX}
    n, mean = pl.col(_P_PRICE_N), pl.col(_P_PRICE_MEAN)
    total = n.sum()
    pooled = pl.when(total > 0).then((n * mean).sum() / total).otherwise(0.0)
    aggs = []
    for c in parts.columns:
        if c in (S.ITEM_ID, _P_PRICE_MEAN, _P_PRICE_M2):
            continue
        aggs.append(pl.col(c).min() if c in mins else pl.col(c).max() if c in maxs else pl.col(c).sum())
    # Pooled mean and M2 (numerically stable; a constant price gives a std of exactly 0).
    aggs += [pooled.alias(_P_PRICE_MEAN), (pl.col(_P_PRICE_M2) + n * (mean - pooled) ** 2).sum().alias(_P_PRICE_M2)]
    return parts.group_by(S.ITEM_ID).agg(aggs)


def item_features(combined: pl.DataFrame, catalog: pl.DataFrame, p: FeatureParams) -> pl.DataFrame:
    """Every catalog item (cold ones with zero counts) with its text, popularity and prices."""
    count_cols = [S.n_col(t) for t in S.EVENT_TYPES] + [S.N_USERS, S.N_SESSIONS, _P_PRICE_N]
    float_cols = [S.half_life_col(h) for h in p.half_lives_days] + [_P_PRICE_MEAN, _P_PRICE_M2]
    df = catalog.join(combined, on=S.ITEM_ID, how="left").with_columns(
        *[pl.col(c).fill_null(0).cast(pl.Int64) for c in count_cols],
        *[pl.col(c).fill_null(0.0).cast(pl.Float64) for c in float_cols],
    )
    n = pl.col(_P_PRICE_N)
    mean = pl.when(n > 0).then(pl.col(_P_PRICE_MEAN))
    std = pl.when(n > 0).then((pl.col(_P_PRICE_M2) / n).sqrt())
    return (
        df.with_columns(item_text_expr(), mean.alias(S.PRICE_MEAN), std.alias(S.PRICE_STD))
        .drop(_P_PRICE_N, _P_PRICE_MEAN, _P_PRICE_M2)
        .sort(S.ITEM_ID)
    )


# --------------------------------------------------------------------------------------------
# co-occurrence
# --------------------------------------------------------------------------------------------
def _split_expr(cutoffs: Cutoffs) -> pl.Expr:
    ts = pl.col(S.TS)
    return (
        pl.when(ts < pl.lit(cutoffs.valid_start).dt.cast_time_unit("us"))
        .then(pl.lit(S.Split.TRAIN.value))
        .when(ts < pl.lit(cutoffs.test_start).dt.cast_time_unit("us"))
        .then(pl.lit(S.Split.VALID.value))
        .otherwise(pl.lit(S.Split.TEST.value))
        .alias(S.SPLIT)
    )


EXAMPLE_COLUMNS = (S.EXAMPLE_KIND, S.USER_ID, S.EVENT_ID, S.TS, S.ANCHOR_TEXT, S.TARGET_ITEM_ID, S.SPLIT)


def training_examples(
    events: pl.DataFrame, titles: pl.DataFrame, p: FeatureParams, cutoffs: Cutoffs
) -> pl.DataFrame:
    """Encoder training pairs (anchor text -> target item) from one batch of whole users.

    - history: for each positive event, the text of the user's last `history_len` events with a
      strictly earlier ts (searches included), newest first. Events sharing the target's ts (one
      basket) are not history: they happened together, not before.
    - query: for each positive event, the latest search of the same session at or before it and
      at most `query_window_s` earlier; a positive event that carries a query itself (a log that
      records each click with the search it came from) is that search.
    The example's ts is its target event's ts; `split` follows the cutoffs. No event after the
    target's ts is read for its anchor (the no-leakage property, tested).
    `titles` holds (item_id, title).
    """
    ev = (
        events.sort([S.USER_ID, S.TS, S.EVENT_ID])
        .join(titles.select(S.ITEM_ID, title_text_expr().alias("__title_text")), on=S.ITEM_ID, how="left",
              maintain_order="left")
        .with_row_index(_ROW)
    )
    new_user = (pl.col(S.USER_ID) != pl.col(S.USER_ID).shift(1)).fill_null(True)
    new_group = new_user | (pl.col(S.TS) != pl.col(S.TS).shift(1)).fill_null(True)
    ev = ev.with_columns(
        _forward_fill_at(new_user, pl.col(_ROW)).alias("__ufirst"),
        _forward_fill_at(new_group, pl.col(_ROW)).alias(_START),
    )
    entries = ev.select(history_entry_expr()).to_series()
    targets = ev.filter(positive_expr())
    # History of a ts group = the rows just before the group's first row, within the same user:
    # integer index ranges gathered from one column, no joins on string keys.
    groups = targets.select(_START, "__ufirst").unique(_START)
    lo = pl.max_horizontal(pl.col("__ufirst").cast(pl.Int64), pl.col(_START).cast(pl.Int64) - p.history_len)
    idx = groups.select(_START, pl.int_ranges(pl.col(_START).cast(pl.Int64) - 1, lo - 1, -1).alias("__idx"))
    idx = idx.filter(pl.col("__idx").list.len() > 0).explode("__idx")
    anchors = (
        idx.with_columns(entries.gather(idx.get_column("__idx")).alias("__entry"))
        .group_by(_START, maintain_order=True)
        .agg(pl.col("__entry").str.join("; ").alias(S.ANCHOR_TEXT))
    )
    history = targets.join(anchors, on=_START).with_columns(
        pl.lit(S.ExampleKind.HISTORY.value).alias(S.EXAMPLE_KIND)
    )

    searches = (
        ev.filter(((pl.col(S.EVENT_TYPE) == S.EventType.SEARCH.value) | positive_expr())
                  & (pl.col(S.QUERY).str.strip_chars().str.len_chars() > 0))
        .select(S.USER_ID, SESSION_KEY, pl.col(S.TS).alias("__sts"), pl.col(S.QUERY).alias("__q"))
        .sort("__sts")
    )
    query = (
        targets.sort(S.TS)
        .join_asof(
            searches,
            left_on=S.TS,
            right_on="__sts",
            by=[S.USER_ID, SESSION_KEY],
            strategy="backward",
            tolerance=dt.timedelta(seconds=p.query_window_s),
            check_sortedness=False,  # both sides are sorted by ts above
        )
        .filter(pl.col("__q").is_not_null())
        .with_columns(
            pl.col("__q").str.replace_all(r"\s+", " ").str.strip_chars().str.to_lowercase().alias(S.ANCHOR_TEXT),
            pl.lit(S.ExampleKind.QUERY.value).alias(S.EXAMPLE_KIND),
        )
    )
    cols = [S.EXAMPLE_KIND, S.USER_ID, S.EVENT_ID, S.TS, S.ANCHOR_TEXT, pl.col(S.ITEM_ID).alias(S.TARGET_ITEM_ID)]
    out = pl.concat([history.select(cols), query.select(cols)])
    # One basket can hold the same item on several lines (same user, ts, anchor): keep one.
    out = out.sort([S.USER_ID, S.TS, S.EVENT_ID, S.EXAMPLE_KIND]).unique(
        [S.EXAMPLE_KIND, S.USER_ID, S.TS, S.TARGET_ITEM_ID], keep="first", maintain_order=True
    )
    return out.with_columns(_split_expr(cutoffs)).select(EXAMPLE_COLUMNS)


def default_cutoffs(
    max_ts: dt.datetime, valid_days: float, test_days: float,
    valid_start: dt.datetime | None = None, test_start: dt.datetime | None = None,
) -> Cutoffs:
    """Cutoffs from explicit instants, else the last `test_days` are test and the `valid_days`
    before them valid."""
    ts = test_start or (max_ts - dt.timedelta(days=test_days))
    vs = valid_start or (ts - dt.timedelta(days=valid_days))
    return Cutoffs(valid_start=vs, test_start=ts)
