"""The ONE online event contract: event types, field limits, the logged record, and how a record
is folded into a profile.

Used by the profile store (serving's log and fold), the offline replay (training and evaluation),
the Ingress (HTTP events become records here) and serving/schemas.py, which derives the API's
limits and allowed event types from these constants; the batch validation (features/data/validate)
applies the same limits, defined with the canonical schema, to logged Parquet.

A record is the JSON object the event log stores: the canonical event fields (features/data/
schema.py) with the timestamp as `ts_us` (epoch microseconds), plus for a search the query's
embedding (`query_vector`, base64 float32) and the time the server logged it (`received_us`).
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any, Callable

import numpy as np

from features.data import schema as S
from features.profiles.profile import Profile, ProfileParams

EVENT_TYPES: tuple[str, ...] = S.EVENT_TYPES
SEARCH = S.EventType.SEARCH.value

# Field limits, defined with the canonical schema (the batch validation applies the same).
MAX_ID_CHARS, MAX_QUERY_CHARS = S.MAX_ID_CHARS, S.MAX_QUERY_CHARS
MAX_QUANTITY, MAX_PRICE, MAX_FUTURE_S = S.MAX_QUANTITY, S.MAX_PRICE, S.MAX_FUTURE_S

# Record keys beyond the canonical columns.
TS_US = "ts_us"
QUERY_VECTOR = "query_vector"
RECEIVED_US = "received_us"

Lookup = Callable[[str], tuple[np.ndarray | None, str | None, float | None]]  # item -> (vector, category, price)


def encode_vector(v: np.ndarray) -> str:
    """(d,) float -> base64 of little-endian float32 (how vectors travel in logs and records)."""
    return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()


def decode_vector(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").astype(np.float32)


def to_epoch_us(ts: dt.datetime) -> int:
    """A timestamp (naive = UTC) as epoch microseconds."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    return int(round(ts.timestamp() * 1_000_000))


def record(event_id: str | None, ts: dt.datetime, user_id: str, event_type: str, item_id: str | None = None,
           query: str | None = None, session_id: str | None = None, quantity: int | None = None,
           price: float | None = None, query_vector: np.ndarray | None = None) -> dict[str, Any]:
    """The log record of one validated event (event_id None: the store assigns one)."""
    rec: dict[str, Any] = {S.EVENT_ID: event_id, TS_US: to_epoch_us(ts), S.USER_ID: user_id,
                           S.SESSION_ID: session_id, S.EVENT_TYPE: event_type, S.ITEM_ID: item_id, S.QUERY: query,
                           S.QUANTITY: quantity, S.PRICE: price}
    if query_vector is not None:
        rec[QUERY_VECTOR] = encode_vector(query_vector)
    return rec


def fold_event(prof: Profile, event_type: str, ts_s: float, params: ProfileParams, lookup: Lookup,
               item_id: str | None = None, query: str | None = None, price: float | None = None,
               query_vector: np.ndarray | None = None) -> None:
    """Fold one event into `prof`: a search with its query's vector; an item event with the item's
    vector and category from `lookup`, and the event's price, else the catalog's. An item event
    that carries the query it came from (a log that records each click with its search) is that
    search too, folded first, as the judgments and the encoder's examples read it."""
    if event_type == SEARCH or (query and query.strip()):
        prof.fold(SEARCH, ts_s, params, vector=query_vector, query=query)
        if event_type == SEARCH:
            return
    vec = category = cat_price = None
    if item_id is not None:
        vec, category, cat_price = lookup(item_id)
    prof.fold(event_type, ts_s, params, vector=vec, item_id=item_id, query=query, category=category,
              price=price if price is not None else cat_price)


def fold_record(prof: Profile, rec: dict[str, Any], params: ProfileParams, lookup: Lookup) -> None:
    """fold_event for a log record."""
    qv = rec.get(QUERY_VECTOR)
    fold_event(prof, rec[S.EVENT_TYPE], rec[TS_US] / 1e6, params, lookup, rec.get(S.ITEM_ID), rec.get(S.QUERY),
               rec.get(S.PRICE), decode_vector(qv) if qv else None)
