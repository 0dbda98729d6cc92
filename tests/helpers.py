"""Builders for hand-made logs used by several tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa

from features import schema as S

T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def ts(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def event(event_id: str, minutes: float, user: str, etype: str = "purchase", item: str | None = "i1",
          query: str | None = None, session: str | None = None, quantity: int | None = 1,
          price: float | None = 1.0, **extra: Any) -> dict[str, Any]:
    row = {S.EVENT_ID: event_id, S.TS: ts(minutes), S.USER_ID: user, S.SESSION_ID: session,
           S.EVENT_TYPE: etype, S.ITEM_ID: item, S.QUERY: query, S.QUANTITY: quantity, S.PRICE: price}
    row.update(extra)
    return row


def events_table(rows: list[dict[str, Any]], schema: pa.Schema = S.EVENTS_SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def items_table(ids_titles: list[tuple[str, str]], categories: dict[str, str] | None = None,
                prices: dict[str, float] | None = None) -> pa.Table:
    categories, prices = categories or {}, prices or {}
    rows = [{S.ITEM_ID: i, S.TITLE: t, S.DESCRIPTION: None, S.CATEGORY: categories.get(i), S.BRAND: None,
             S.PRICE: prices.get(i), S.IN_STOCK: True, S.CREATED_AT: None} for i, t in ids_titles]
    return pa.Table.from_pylist(rows, schema=S.ITEMS_SCHEMA)


def free_port() -> int:
    """A TCP port nothing listens on right now (for private Ray heads and Serve proxies)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
