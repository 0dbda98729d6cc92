"""The offline path to ranking contexts: replay logged events into profiles, in batch.

Training and evaluating a ranker needs, for every logged request, the profile the shopper had at
that moment. `replay_profiles` folds canonical events (a polars frame) through the same
`fold_event` (features/profiles/events.py) the serving Profiles deployment uses, without the log, snapshot and eviction
machinery; tests/unit/test_replay_parity.py proves both give identical ranking features.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from features.data import schema as S
from features.profiles.events import Lookup, fold_event
from features.profiles.profile import Profile, ProfileParams


def replay_profiles(events: pl.DataFrame, lookup: Lookup, params: ProfileParams,
                    query_vectors: dict[str, np.ndarray] | None = None,
                    until: float | None = None, key: str = S.USER_ID) -> dict:
    """Profiles after folding `events` (canonical columns; ts as a datetime) in (ts, event_id)
    order, optionally only those with ts <= `until` (epoch seconds). Search events take their
    vector from `query_vectors` (query text -> embedding); a missing one folds without a vector.
    One profile per value of `key` (the user; `profiles_at` keys by request instead)."""
    ev = events.sort([S.TS, S.EVENT_ID])
    if until is not None:
        ev = ev.filter(pl.col(S.TS).dt.epoch("us") <= int(round(until * 1e6)))
    qv = query_vectors or {}
    profiles: dict = {}
    cols = [key, S.EVENT_TYPE, S.TS, S.ITEM_ID, S.QUERY, S.PRICE]
    for owner, etype, ts, item, query, price in ev.select(cols).iter_rows():
        prof = profiles.get(owner)
        if prof is None:
            prof = profiles[owner] = Profile(str(owner))
        fold_event(prof, etype, ts.timestamp(), params, lookup, item, query, price, qv.get(query))
    return profiles


def profiles_at(events: pl.DataFrame, requests: pl.DataFrame, lookup: Lookup, params: ProfileParams,
                query_vectors: dict[str, np.ndarray] | None = None) -> list[Profile | None]:
    """For every request (columns user_id, ts), the profile its user had just before it: the fold
    of that user's events with ts strictly earlier. None for a user with no earlier event.
    With a `cut_event_id` column, a request's context also holds its user's events at the same ts
    with a smaller event id (the fold order): the in-session requests of features/evaluation/splits.py.
    Several requests of one user each get their own fold (exact, at the cost of re-folding)."""
    cut = pl.col("cut_event_id") if "cut_event_id" in requests.columns else pl.lit(None, pl.String)
    req = requests.select(S.USER_ID, pl.col(S.TS).alias("__req_ts"), cut.alias("__cut")).with_row_index("__req")
    expanded = events.join(req, on=S.USER_ID, how="inner").filter(
        (pl.col(S.TS) < pl.col("__req_ts"))
        | ((pl.col(S.TS) == pl.col("__req_ts")) & pl.col("__cut").is_not_null() & (pl.col(S.EVENT_ID) < pl.col("__cut"))))
    by_req = replay_profiles(expanded, lookup, params, query_vectors, key="__req")
    return [by_req.get(i) for i in range(req.height)]
