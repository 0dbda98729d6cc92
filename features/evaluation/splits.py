"""Offline evaluation without Ray: the splits and the requests every method is scored on.

Protocol (recommendation, from a canonical event log):
- An *interaction* is a user's positive events (view, click, add_to_cart, purchase) at one
  timestamp: a basket when the log writes an order's lines with one timestamp (Online Retail).
- Split `time:<ISO>`: everything before the instant trains; each user's first interaction at or
  after it is that user's test request. The ranker learns from the `ranker_days` before the
  instant: each user's first `ranker_per_user` interactions in that window (each with its own
  context), with every stage it sees (features, co-occurrence, popularity) built from the events
  before the window.
- Split `leave-last`: each user's last interaction is the test request, the one before it the
  ranker's (validation) request; stages see each user's events before the respective request.
- A request's context is the user's events strictly before it (replayed into a profile exactly as
  serving folds them); its relevant items are the items of the interaction, minus the items the
  user bought before when `exclude_purchased` (serving's default: buyers are not shown what they
  bought). Every method excludes the same items. Requests left without a relevant item are dropped
  and counted.
- Every method ranks the FULL catalog (no sampled negatives) and returns its top L (L = max k).

The methods compared and their metrics are in features/evaluation/methods.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from features import artifacts as A
from features.data import schema as S
from features.data.validate import ValidationConfig, split_duplicates, validate_events, validate_items
from features.profiles.profile import Profile, ProfileParams
from features.profiles.replay import profiles_at
from features.retrieval.catalog import Catalog

SPLITS = ("time:<ISO 8601 instant>", "last:<days>d", "leave-last")


@dataclass(frozen=True)
class SplitSpec:
    kind: str  # "time" | "last" (a time split at the UTC midnight `days` before the last interaction) | "leave-last"
    at: dt.datetime | None = None
    days: float | None = None

    @classmethod
    def parse(cls, text: str) -> "SplitSpec":
        t = (text or "").strip()
        if t == "leave-last":
            return cls("leave-last")
        if t.startswith("last:"):
            raw = t[5:].strip()
            try:
                days = float(raw.removesuffix("d"))
            except ValueError:
                days = -1.0
            if not raw.endswith("d") or not days > 0:
                raise ValueError(f"split: {raw!r} after 'last:' is not a number of days (e.g. last:30d)")
            return cls("last", days=days)
        if t.startswith("time:"):
            raw = t[5:].strip()
            try:
                at = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"split: {raw!r} after 'time:' is not an ISO 8601 instant "
                                 f"(e.g. time:2011-11-09T00:00:00Z)") from None
            return cls("time", at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc))
        raise ValueError(f"split: {text!r}; allowed: {', '.join(SPLITS)}")


def interactions(events: pl.DataFrame) -> pl.DataFrame:
    """(user_id, ts, items, first_event_ids) per user and timestamp: the distinct item ids in
    (ts, event_id) order (the order profiles fold them) and the first event id of each."""
    pos = events.filter(pl.col(S.EVENT_TYPE).is_in(list(S.POSITIVE_EVENT_TYPES)) & pl.col(S.ITEM_ID).is_not_null())
    firsts = (pos.sort([S.USER_ID, S.TS, S.EVENT_ID])
              .group_by([S.USER_ID, S.TS, S.ITEM_ID], maintain_order=True).agg(pl.col(S.EVENT_ID).first()))
    return (firsts.group_by([S.USER_ID, S.TS], maintain_order=True)
            .agg(pl.col(S.ITEM_ID).alias("items"), pl.col(S.EVENT_ID).alias("first_event_ids")))


def in_session(requests: pl.DataFrame, reveal: float = 0.5) -> pl.DataFrame:
    """The in-session variant of interaction requests: the first `reveal` share of each
    interaction's items (at least one) join the context, as if the shopper had just added them;
    the rest are the targets. Interactions with a single item are left out. Adds `cut_event_id`:
    the context is every event before (ts, cut_event_id) in fold order."""
    if not 0 < reveal < 1:
        raise ValueError(f"in_session.reveal must be in (0, 1), got {reveal}")
    rows = []
    for user, ts, items, eids in requests.select(S.USER_ID, S.TS, "items", "first_event_ids").iter_rows():
        if len(items) < 2:
            continue
        k = min(max(1, int(len(items) * reveal)), len(items) - 1)
        rows.append((user, ts, items[k:], eids[k:], eids[k], items[:k]))
    schema = {S.USER_ID: pl.String, S.TS: requests.schema[S.TS], "items": pl.List(pl.String),
              "first_event_ids": pl.List(pl.String), "cut_event_id": pl.String, "revealed": pl.List(pl.String)}
    return pl.DataFrame(rows, schema=schema, orient="row")


@dataclass
class SplitPlan:
    """Everything the evaluation trains and scores, cut so no stage sees what it is scored on."""

    spec: SplitSpec
    train_events: pl.DataFrame  # what the test requests' stages are trained on
    ranker_events: pl.DataFrame  # what the ranker's requests' stages are trained on (a prefix of train)
    test_requests: pl.DataFrame  # user_id, ts, items
    ranker_requests: pl.DataFrame
    train_until: dt.datetime  # newest instant any stage of the test requests saw
    ranker_until: dt.datetime
    notes: tuple[str, ...] = ()  # what the plan changed to fit the log (last:<days>d on a short log)


def _before(events: pl.DataFrame, cut: pl.DataFrame) -> pl.DataFrame:
    """Each user's events strictly before that user's cut ts (users without a cut keep all)."""
    j = events.join(cut.select(S.USER_ID, pl.col(S.TS).alias("__cut")), on=S.USER_ID, how="left")
    return j.filter(pl.col("__cut").is_null() | (pl.col(S.TS) < pl.col("__cut"))).drop("__cut")


def first_per_user(inter: pl.DataFrame, k: int = 1) -> pl.DataFrame:
    """Each user's first k interactions (in time order)."""
    if k < 1:
        raise ValueError(f"ranker_requests_per_user must be >= 1, got {k}")
    return inter.sort([S.USER_ID, S.TS]).group_by(S.USER_ID, maintain_order=True).head(k)


def plan_split(events: pl.DataFrame, spec: SplitSpec, ranker_days: float = 30.0,
               ranker_per_user: int = 1) -> SplitPlan:
    inter = interactions(events)
    if inter.is_empty():
        raise ValueError("events: no positive interactions (view, click, add_to_cart, purchase) to evaluate")
    notes: list[str] = []
    if spec.kind == "last":  # the test period: the last `days` days, from a UTC midnight (the same split for every run)
        lo, hi = inter[S.TS].min(), inter[S.TS].max()
        span = (hi - lo).total_seconds() / 86400
        days = spec.days
        if 2 * days > span:  # the default on a short log: test on its last quarter instead of refusing
            days = span / 4
            notes.append(f"split: last:{spec.days:g}d would leave less than half of this {span:.1f}-day log to "
                         f"train on; tested on its last quarter ({days:.2f} days) instead")
        end = hi - dt.timedelta(days=days)
        midnight = dt.datetime(end.year, end.month, end.day, tzinfo=dt.timezone.utc)
        spec = SplitSpec("time", midnight if midnight > lo else end)
        before = (spec.at - lo).total_seconds() / 86400
        if ranker_days >= before:  # the ranker's label window would start before the log
            notes.append(f"ranker_days: {ranker_days:g} reaches back before this log's first interaction; "
                         f"the ranker's label window is the last half ({before / 2:.2f} days) of the training part")
            ranker_days = before / 2
    if spec.kind == "time":
        at = spec.at
        lo, hi = inter[S.TS].min(), inter[S.TS].max()
        if not lo < at <= hi:
            raise ValueError(f"split: time:{at.isoformat()} must fall after the first and at or before the last "
                             f"interaction ({lo.isoformat()} .. {hi.isoformat()}); last:30d tests on the last 30 days")
        rv = at - dt.timedelta(days=ranker_days)
        test = inter.filter(pl.col(S.TS) >= at).group_by(S.USER_ID, maintain_order=True).first()
        ranker = first_per_user(inter.filter((pl.col(S.TS) >= rv) & (pl.col(S.TS) < at)), ranker_per_user)
        train = events.filter(pl.col(S.TS) < at)
        ranker_ev = events.filter(pl.col(S.TS) < rv)
        return SplitPlan(spec, train, ranker_ev, test, ranker, at, rv, tuple(notes))
    # leave-last: per user, last interaction = test, the one before = ranker/validation
    ranked = inter.with_columns(pl.int_range(pl.len()).reverse().over(S.USER_ID).alias("__from_end"))
    test = ranked.filter(pl.col("__from_end") == 0).drop("__from_end")
    ranker = ranked.filter(pl.col("__from_end") == 1).drop("__from_end")
    train = _before(events, test)
    ranker_ev = _before(train, ranker.select(S.USER_ID, S.TS).vstack(
        test.join(ranker, on=S.USER_ID, how="anti").select(S.USER_ID, S.TS)))
    return SplitPlan(spec, train, ranker_ev, test, ranker, train[S.TS].max(), ranker_ev[S.TS].max())


def read_inputs(events_path: str, items_path: str, vcfg: ValidationConfig | None = None
                ) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Canonical events and items, validated exactly as the feature job does: rows that fail are
    left out and counted (the feature job's quarantine holds them), duplicate event ids keep one."""
    vcfg = vcfg or ValidationConfig()
    items, items_bad = validate_items(read_table(items_path), vcfg)
    if items.is_empty():
        raise ValueError(f"items {items_path}: no valid item rows")
    raw = read_table(events_path)
    ok, bad = validate_events(raw, items.get_column(S.ITEM_ID), vcfg)
    ok, dups = split_duplicates(ok)
    counts = {"events_in": raw.num_rows, "events_valid": ok.height, "events_left_out": bad.height + dups.height,
              "items_valid": items.height, "items_left_out": items_bad.height}
    if ok.is_empty():
        raise ValueError(f"events {events_path}: no valid events")
    return ok, items, counts


def read_table(path: str) -> pa.Table:
    import pyarrow.parquet as pq

    files = A.list_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no Parquet file there")
    return pa.concat_tables([pq.read_table(fs.open_input_file(p)) for fs, p in files], promote_options="permissive")


def with_in_session(requests: pl.DataFrame, reveal: float = 0.5) -> pl.DataFrame:
    """The requests followed by their in-session variants (see `in_session`)."""
    base = requests.with_columns(pl.lit(None, pl.String).alias("cut_event_id"),
                                 pl.lit(None, pl.List(pl.String)).alias("revealed"))
    return pl.concat([base, in_session(requests, reveal)], how="diagonal_relaxed")


# --- requests ----------------------------------------------------------------------------------
@dataclass
class Requests:
    """Scored requests: who, when, what counts as relevant, what every method must exclude."""

    users: list[str]
    ts: np.ndarray  # epoch seconds
    relevant: list[set[str]]
    exclude: list[frozenset[str]]
    cut_event_ids: list[str | None] = field(default_factory=list)  # in-session: context ends before this event
    revealed: list[list[str]] = field(default_factory=list)  # in-session: the items already in the basket
    profiles: list[Profile | None] = field(default_factory=list)
    dropped: int = 0  # requests without a relevant item after exclusions

    def __len__(self) -> int:
        return len(self.users)


def build_requests(events: pl.DataFrame, requests: pl.DataFrame, exclude_purchased: bool = True,
                   max_requests: int = 0, seed: int = 0) -> Requests:
    """Relevant and excluded items of each request (see the module doc); `events` must hold at
    least every event before each request (the context). max_requests > 0: a seeded sample."""
    req = requests
    if max_requests and req.height > max_requests:
        req = req.sample(max_requests, seed=seed).sort([S.TS, S.USER_ID])
    bought = (events.filter(pl.col(S.EVENT_TYPE) == S.EventType.PURCHASE.value)
              .join(req.select(S.USER_ID, pl.col(S.TS).alias("__rt")), on=S.USER_ID)
              .filter(pl.col(S.TS) < pl.col("__rt"))
              .group_by(S.USER_ID, "__rt").agg(pl.col(S.ITEM_ID).unique().alias("__bought")))
    req = req.join(bought, left_on=[S.USER_ID, S.TS], right_on=[S.USER_ID, "__rt"], how="left")
    if "cut_event_id" not in req.columns:
        req = req.with_columns(pl.lit(None, pl.String).alias("cut_event_id"), pl.lit(None, pl.List(pl.String)).alias("revealed"))
    users, ts, relevant, exclude, cuts, shown = [], [], [], [], [], []
    dropped = 0
    for user, t, items, b, cut, revealed in req.select(S.USER_ID, S.TS, "items", "__bought", "cut_event_id",
                                                       "revealed").iter_rows():
        # Items revealed in the session are in the context (and, as purchases, excluded by serving).
        ex = frozenset((b or []) + (revealed or [])) if exclude_purchased else frozenset(revealed or [])
        rel = {i for i in items if i not in ex}
        if not rel:
            dropped += 1
            continue
        users.append(user)
        ts.append(t.timestamp())
        relevant.append(rel)
        exclude.append(ex)
        cuts.append(cut)
        shown.append(list(revealed or []))
    return Requests(users, np.array(ts, dtype=np.float64), relevant, exclude, cuts, shown, dropped=dropped)


def attach_profiles(reqs: Requests, events: pl.DataFrame, catalog: Catalog, params: ProfileParams) -> list[Profile | None]:
    """The profile of each request's user just before it, folded with `catalog`'s vectors."""
    frame = pl.DataFrame({S.USER_ID: reqs.users,
                          S.TS: pl.Series([dt.datetime.fromtimestamp(t, dt.timezone.utc) for t in reqs.ts])
                          .cast(pl.Datetime("us", "UTC")),
                          "cut_event_id": pl.Series(reqs.cut_event_ids or [None] * len(reqs), dtype=pl.String)})
    return profiles_at(events, frame, catalog.lookup, params)


