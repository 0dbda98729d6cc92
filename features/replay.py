"""The offline path to ranking contexts: replay logged events into profiles, in batch.

Training and evaluating a ranker needs, for every logged request, the profile the shopper had at
that moment. `replay_profiles` folds canonical events (a polars frame) through the same
`Profile.fold` the serving Profiles deployment uses, without the log, snapshot and eviction
machinery; tests/unit/test_replay_parity.py proves both give identical ranking features.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl

from features import schema as S
from features.profile import Profile, ProfileParams

Lookup = Callable[[str], tuple[np.ndarray | None, str | None, float | None]]


def replay_profiles(events: pl.DataFrame, lookup: Lookup, params: ProfileParams,
                    query_vectors: dict[str, np.ndarray] | None = None,
                    until: float | None = None) -> dict[str, Profile]:
    """Profiles after folding `events` (canonical columns; ts as a datetime) in (ts, event_id)
    order, optionally only those with ts <= `until` (epoch seconds). Search events take their
    vector from `query_vectors` (query text -> embedding); a missing one folds without a vector."""
    ev = events.sort([S.TS, S.EVENT_ID])
    if until is not None:
        ev = ev.filter(pl.col(S.TS).dt.epoch("us") <= int(round(until * 1e6)))
    qv = query_vectors or {}
    profiles: dict[str, Profile] = {}
    cols = [S.USER_ID, S.EVENT_TYPE, S.TS, S.ITEM_ID, S.QUERY, S.PRICE]
    for user, etype, ts, item, query, price in ev.select(cols).iter_rows():
        prof = profiles.setdefault(user, Profile(user))
        t = ts.timestamp()
        if etype == S.EventType.SEARCH.value:
            prof.fold(etype, t, params, vector=qv.get(query), query=query)
            continue
        vec = category = cat_price = None
        if item is not None:
            vec, category, cat_price = lookup(item)
        prof.fold(etype, t, params, vector=vec, item_id=item, query=query, category=category,
                  price=price if price is not None else cat_price)
    return profiles
