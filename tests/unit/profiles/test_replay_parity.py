"""Offline/online parity: the same events give the same ranking features whether they went
through the serving ProfileStore (log, snapshots, eviction, a restart) or the batch replay."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from features.data import schema as S
from features.profiles.events import QUERY_VECTOR, TS_US, encode_vector, to_epoch_us
from features.profiles.profile import ProfileParams
from features.profiles.replay import replay_profiles
from features.profiles.store import ProfileStore
from features.retrieval.ranking import candidate_features, context_for
from tests.helpers import small_catalog

P = ProfileParams(session_gap_s=600.0)


def test_store_and_batch_replay_give_identical_features(tmp_path):
    cat, _ = small_catalog(40)
    lookup = cat.lookup

    rng = np.random.default_rng(3)
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    qvec = {"red lamp": cat.vectors[5], "blue box": cat.vectors[7]}
    rows = []
    for n in range(300):
        etype = rng.choice(["view", "click", "add_to_cart", "purchase", "search", "return"])
        ts = t0 + dt.timedelta(seconds=int(rng.integers(0, 6 * 3600)))
        query = str(rng.choice(list(qvec))) if etype == "search" else None
        rows.append({S.EVENT_ID: f"e{n:04d}", S.USER_ID: f"u{rng.integers(0, 12)}", S.EVENT_TYPE: str(etype),
                     S.TS: ts, S.ITEM_ID: None if etype == "search" else cat.item_ids[int(rng.integers(0, 40))],
                     S.QUERY: query, S.PRICE: None})
    events = pl.DataFrame(rows).with_columns(pl.col(S.TS).dt.cast_time_unit("us"))
    ordered = events.sort([S.TS, S.EVENT_ID]).to_dicts()

    # online: through the store in arrival batches, tiny memory (evictions write profiles out between
    # snapshots), and a crash half way (no close: the log tail after the last snapshot is replayed)
    def open_store() -> ProfileStore:
        return ProfileStore(tmp_path, P, lookup, max_users_in_memory=3, snapshot_every_events=60,
                            snapshot_every_s=1e9, fsync=False)

    store = open_store()
    for i in range(0, len(ordered), 25):
        if i == 175:
            store = open_store()
        batch = []
        for e in ordered[i:i + 25]:
            rec = {S.EVENT_ID: e[S.EVENT_ID], TS_US: to_epoch_us(e[S.TS]), S.USER_ID: e[S.USER_ID],
                   S.EVENT_TYPE: e[S.EVENT_TYPE], S.ITEM_ID: e[S.ITEM_ID], S.QUERY: e[S.QUERY], S.PRICE: None}
            if e[S.QUERY]:
                rec[QUERY_VECTOR] = encode_vector(qvec[e[S.QUERY]])
            batch.append(rec)
        store.append(batch)

    # offline: one batch replay
    offline = replay_profiles(events, lookup, P, qvec)
    now = (t0 + dt.timedelta(hours=6, minutes=5)).timestamp()
    rows_all = np.arange(len(cat))
    assert set(offline) == {f"u{i}" for i in range(12)} & set(events[S.USER_ID].to_list())
    for user, prof in offline.items():
        online = store.get(user)
        for mode in ("search", "recommend"):
            a = candidate_features(context_for(mode, online, now, P, "red lamp", qvec["red lamp"]), rows_all, cat)
            b = candidate_features(context_for(mode, prof, now, P, "red lamp", qvec["red lamp"]), rows_all, cat)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{user} {mode}")
