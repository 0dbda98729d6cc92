"""Seed profiles: each shopper's profile as of a features version, the state serving starts from.

The ranker is trained and evaluated on profiles replayed from every logged event of the shopper
(features/profiles/replay.py). A seed folded from the last 50 interactions only would serve a
different profile: a regular customer's preference would be their last order, their purchases
older than it could be recommended again, and their price range the last order's. So the feature
job replays every event of each shopper up to its as_of through the same `fold_event`
(`seed_states`), and serving loads the result (`profile_from_seed`).

Item vectors belong to an encoder, and the feature job runs before one is chosen. The fold is
linear in the vectors, so the job folds each of a shopper's distinct items as a unit vector of its
own (one dimension per item): the preference and intent sums come out as a weight per item, and
serving multiplies the weights by its own index's item vectors. That is the replay's sum exactly,
up to `max_items` items per sum (the largest weights; with a 30-day half-life the rest hold
little). A search's query vector is left out of the seeded intent (neither the feature job nor
the Profiles replicas hold the encoder); that matters only for a shopper whose last session was
still under way at as_of, and the next live event starts from the seeded profile as usual.

`seed_profile` folds the feature job's recent-interaction lists instead: the fallback for a users
table written before the seeds existed or with other profile parameters.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import polars as pl

from features import artifacts as A
from features.config import ConfigError, from_dict
from features.data import schema as S
from features.profiles.events import Lookup, fold_event
from features.profiles.profile import Profile, ProfileParams

PROFILE_SEED = "profile_seed"  # the users table's column: a profile as JSON, vectors as item weights
MAX_SEED_ITEMS = 500  # item weights kept per vector sum
# Distinct items folded as their own dimension, the shopper's most recent ones: folding an event
# costs one pass over the dimensions, so this bounds a bot's or a huge account's cost; older items
# beyond it fold as items without a vector (their weights, decayed for months, are past the 500 kept).
MAX_SEED_DIMS = 4096


def seed_states(events: pl.DataFrame, catalog: pl.DataFrame, params: ProfileParams,
                max_items: int = MAX_SEED_ITEMS) -> pl.DataFrame:
    """user_id, profile_seed (JSON) for every user in `events` (canonical columns, ts a datetime;
    all of each user's events up to as_of). `catalog` needs item_id, category, price."""
    ev = events.sort([S.USER_ID, S.TS, S.EVENT_ID])
    cat = dict(zip(catalog.get_column(S.ITEM_ID).to_list(),
                   zip(catalog.get_column(S.CATEGORY).to_list(), catalog.get_column(S.PRICE).to_list())))
    distinct = (ev.filter(pl.col(S.ITEM_ID).is_not_null()).group_by(S.USER_ID)
                .agg(pl.col(S.ITEM_ID).reverse().unique(maintain_order=True).head(MAX_SEED_DIMS)))
    items_of = dict(zip(distinct.get_column(S.USER_ID).to_list(), distinct.get_column(S.ITEM_ID).to_list()))
    users: list[str] = []
    seeds: list[str] = []
    cols = [S.USER_ID, S.EVENT_TYPE, S.TS, S.ITEM_ID, S.QUERY, S.PRICE]
    prof: Profile | None = None
    order: list[str] = []
    for uid, etype, ts, item, query, price in ev.select(cols).iter_rows():
        if prof is None or uid != prof.user_id:
            if prof is not None:
                users.append(prof.user_id)
                seeds.append(_to_json(prof, order, max_items))
            prof, order = Profile(uid), items_of.get(uid, [])
            lookup = _unit_lookup(order, cat)
        fold_event(prof, etype, _epoch_s(ts), params, lookup, item, query, price, None)
    if prof is not None:
        users.append(prof.user_id)
        seeds.append(_to_json(prof, order, max_items))
    return pl.DataFrame({S.USER_ID: users, PROFILE_SEED: seeds}, schema={S.USER_ID: pl.String, PROFILE_SEED: pl.String})


def with_seeds(users: pl.DataFrame, events: pl.DataFrame, catalog: pl.DataFrame, params: ProfileParams,
               as_of: dt.datetime) -> pl.DataFrame:
    """The feature job's users table (one block of whole users) with each user's `profile_seed`,
    folded from their events up to `as_of` (the events the table itself was computed from)."""
    ev = events.filter(pl.col(S.TS) <= pl.lit(as_of).dt.cast_time_unit("us"))
    return users.join(seed_states(ev, catalog, params), on=S.USER_ID, how="left", maintain_order="left")


def profile_from_seed(text: str, lookup: Lookup) -> Profile:
    """The profile a `profile_seed` describes, its sums taken over `lookup`'s item vectors (an item
    without a vector adds nothing, as in a replay with the same lookup)."""
    d = json.loads(text)
    weights = {k: d.pop(k) for k in ("pref_sum", "intent_sum")}
    prof = Profile.from_dict({**d, "pref_sum": None, "intent_sum": None, "last_query_vec": None})
    prof.pref_sum = _weighted_sum(weights["pref_sum"], lookup)
    prof.intent_sum = _weighted_sum(weights["intent_sum"], lookup)
    return prof


def seed_profiles(users: Any, lookup: Lookup, p: ProfileParams, seeded_with: ProfileParams | None = None) -> list[Profile]:
    """The profiles of a feature job's users table (a polars frame): from its `profile_seed`
    column when the table has one and was computed with parameters `seeded_with` equal to `p`,
    else folded from each row's recent lists (`seed_profile`)."""
    use_seed = PROFILE_SEED in users.columns and seeded_with == p
    seeds = users.get_column(PROFILE_SEED) if use_seed else pl.Series([None] * users.height, dtype=pl.String)
    cols = [S.USER_ID, S.RECENT_ITEMS, S.RECENT_EVENT_TYPES, S.RECENT_TS, S.RECENT_QUERIES]
    out = []
    for seed, (uid, items, types, ts, queries) in zip(seeds.to_list(), users.select(cols).iter_rows()):
        out.append(profile_from_seed(seed, lookup) if seed else
                   seed_profile(uid, items, types, [_epoch_s(t) for t in ts], queries, lookup, p))
    return out


def seeded_with(features_dir: str) -> ProfileParams | None:
    """The profile parameters a features version computed its seeds with (None: no seeds, or a
    version written before them)."""
    d = (A.read_manifest(features_dir).get("config") or {}).get("profiles")
    try:
        return from_dict(ProfileParams, d, "profiles") if isinstance(d, dict) else None
    except (ConfigError, TypeError, ValueError):
        return None


def seed_profile(user_id: str, recent_items: list[str], recent_event_types: list[str], recent_ts: list[float],
                 recent_queries: list[str], lookup: Lookup, p: ProfileParams) -> Profile:
    """A profile from recent-interaction lists (newest first, ts in epoch seconds), by replaying
    them oldest first through `Profile.fold`. `lookup(item_id)` gives (vector or None, category,
    price) for an item. The queries carry no time; they are kept as recent queries at the last
    event's time."""
    prof = Profile(user_id)
    for item_id, event_type, ts in reversed(list(zip(recent_items, recent_event_types, recent_ts))):
        vec, category, price = lookup(item_id)
        prof.fold(event_type, ts, p, vector=vec, item_id=item_id, category=category, price=price)
    last = prof.last_ts
    prof.recent_queries = [(q, last) for q in recent_queries[: p.recent_queries] if q]
    return prof


def _epoch_s(ts: dt.datetime) -> float:
    """A timestamp (naive = UTC) as epoch seconds."""
    return (ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)).timestamp()


def _unit_lookup(order: list[str], cat: dict[str, tuple[str | None, float | None]]) -> Lookup:
    """item -> (its own unit vector among the shopper's distinct items, category, catalog price)."""
    pos = {item: k for k, item in enumerate(order)}
    m = len(order)

    def lookup(item_id: str) -> tuple[np.ndarray | None, str | None, float | None]:
        k = pos.get(item_id)
        category, price = cat.get(item_id, (None, None))
        if k is None:
            return None, category, price
        v = np.zeros(m, np.float64)
        v[k] = 1.0
        return v, category, (None if price is None or not np.isfinite(price) else float(price))

    return lookup


def _to_json(prof: Profile, order: list[str], max_items: int) -> str:
    """The profile as JSON, each vector sum as [[item, weight], ...] (largest weights first)."""
    d = prof.to_dict()
    for key in ("pref_sum", "intent_sum"):
        v = getattr(prof, key)
        if v is None:
            d[key] = None
            continue
        top = np.argsort(-v, kind="stable")[:max_items]
        d[key] = [[order[k], float(v[k])] for k in top if v[k] > 0]
    d["last_query_vec"] = None
    return json.dumps(d, separators=(",", ":"))


def _weighted_sum(pairs: list | None, lookup: Lookup) -> np.ndarray | None:
    if not pairs:
        return None
    total: np.ndarray | None = None
    for item, w in pairs:
        vec = lookup(item)[0]
        if vec is not None:
            total = w * vec.astype(np.float64) if total is None else total + w * vec.astype(np.float64)
    return total
