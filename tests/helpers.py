"""Builders for hand-made logs used by several tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from features.data import schema as S
from features.retrieval.catalog import Catalog
from features.retrieval.index import IndexConfig, ItemIndex
from features.retrieval.ranking import FEATURE_NAMES

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


D = 16  # the dimension of small_catalog's vectors


def small_catalog(n: int = 50, seed: int = 0) -> tuple[Catalog, ItemIndex]:
    """A random catalog of n items in D dimensions with titles, categories, prices and popularity."""
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, D)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"i{k:03d}" for k in range(n)]
    titles = [f"{['red', 'blue', 'green'][k % 3]} {['mug', 'bag', 'lamp', 'box'][k % 4]} {k}" for k in range(n)]
    items = pl.DataFrame({
        S.ITEM_ID: ids, S.TITLE: titles, S.ITEM_TEXT: titles,
        S.CATEGORY: [["Home > Kitchen", "Home > Light", "Toys"][k % 3] for k in range(n)],
        S.PRICE: [float(k + 1) for k in range(n)], S.IN_STOCK: [k % 5 != 0 for k in range(n)],
        S.half_life_col(7): [float(n - k) for k in range(n)],
    })
    cooc = {"i000": (["i010", "i020"], np.array([0.9, 0.4]))}
    index = ItemIndex.build(ids, vecs, IndexConfig(kind="flat"))
    return Catalog(ids, vecs, items, cooc), index


def synthetic_lists(n_groups: int, seed: int):
    """Lists where relevance follows feature 'cooc' and noise fills the others."""
    rng = np.random.default_rng(seed)
    xs, ys, gs = [], [], []
    for g in range(n_groups):
        x = rng.random((20, len(FEATURE_NAMES))).astype(np.float32)
        y = (x[:, FEATURE_NAMES.index("cooc")] > 0.8).astype(float)
        y[0] = 1.0  # at least one positive
        x[0, FEATURE_NAMES.index("cooc")] = 0.95
        xs.append(x), ys.append(y), gs.append(np.full(20, g))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
