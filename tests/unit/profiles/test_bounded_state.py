"""Bounded online state: the de-duplication window (time and count, persisted), start-up from the
snapshot plus the log tail, log retention, and the catalog size limit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from features.profiles.dedup import DedupWindow
from features.profiles.eventlog import RecordLog
from features.profiles.events import TS_US
from features.profiles.profile import ProfileParams
from features.profiles.store import ProfileStore, StateLimits

P = ProfileParams()
D = 4


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _store(path, clock, limits: StateLimits, **kw) -> ProfileStore:
    vec = np.ones(D, np.float32) / 2
    return ProfileStore(path, P, lambda i: (vec, None, None), fsync=False, limits=limits, clock=clock,
                        snapshot_every_events=10**9, snapshot_every_s=1e9, **kw)


def _ev(eid: str, user: str = "u", t: float = 1.0) -> dict:
    return {"event_id": eid, "user_id": user, "event_type": "view", "item_id": "i1", TS_US: int(t * 1e6)}


def test_window_forgets_by_age_and_by_count():
    w = DedupWindow(window_s=10, max_ids=3)
    for i, t in enumerate([0, 1, 2]):
        w.add(f"e{i}", "u", t)
    assert len(w) == 3 and "e0" in w
    w.add("e3", "u", 3)  # over the count: the oldest goes
    assert "e0" not in w and len(w) == 3
    w.prune(12.5)  # e1 (t=1) and e2 (t=2) are older than 10 s
    assert "e1" not in w and "e2" not in w and "e3" in w


def test_duplicates_inside_the_window_survive_a_restart_and_old_ids_are_let_go(tmp_path):
    clock = Clock()
    lim = StateLimits(dedup_window_s=3600, dedup_max_ids=1000)
    s = _store(tmp_path, clock, lim)
    assert s.append([_ev("a"), _ev("b")]) == (["a", "b"], [])
    s.snapshot()  # "a" and "b" persisted with the snapshot
    s.append([_ev("c")])  # only in the log tail
    del s  # a crash: no close
    clock.t += 60
    again = _store(tmp_path, clock, lim)
    assert again.stats["replayed"] == 1  # start-up read the tail after the snapshot, not the whole log
    assert again.append([_ev("a"), _ev("c"), _ev("d")]) == (["d"], ["a", "c"])
    clock.t += 7200  # past the window: a very late retry is a new event
    again.snapshot()
    assert again.known_event_ids() == 0
    assert again.append([_ev("a")]) == (["a"], [])


def test_memory_stays_flat_under_a_stream_of_new_event_ids(tmp_path):
    clock = Clock()
    lim = StateLimits(dedup_window_s=1e9, dedup_max_ids=500, log_segment_bytes=4096, log_retention_s=0)
    s = _store(tmp_path, clock, lim, max_users_in_memory=50)
    for batch in range(40):
        s.append([_ev(f"b{batch}-{i}", user=f"u{(batch * 50 + i) % 300}") for i in range(50)])
        clock.t += 1
        if batch % 5 == 4:
            s.snapshot()
    assert s.known_event_ids() == 500 and s.in_memory() <= 50
    rows = s.db.execute("SELECT COUNT(*) FROM dedup").fetchone()[0]
    assert rows == 500  # the persisted window is bounded too
    # retention: segments the snapshot covers are gone; the log holds about one segment
    assert s.stats["segments_dropped"] > 0 and s.log.size_bytes() < 3 * 4096
    s.append([_ev("after-compaction")])
    s.close()
    again = _store(tmp_path, clock, lim, max_users_in_memory=50)
    assert again.get("u0") is not None and again.get("u0").n_events >= 1
    assert again.append([_ev("after-compaction"), _ev("b39-49")]) == ([], ["after-compaction", "b39-49"])


def test_retention_keeps_what_no_snapshot_covers_and_young_segments(tmp_path):
    log = RecordLog(tmp_path, segment_bytes=1024, fsync=False)
    for i in range(60):
        log.append([{"i": i, "pad": "z" * 60}])
    n = len(log.segments())
    assert n > 4
    assert log.drop_through(10**9, older_than_s=3600) == []  # all young
    first_needed = 25
    dropped = log.drop_through(first_needed - 1, older_than_s=0)
    assert dropped and len(log.segments()) < n
    assert [r["i"] for r in log.read_after(first_needed - 1)] == list(range(first_needed - 1, 60))  # nothing needed lost
    log.drop_through(10**9, older_than_s=0)
    assert len(log.segments()) == 1  # the newest segment is never dropped
    reopened = RecordLog(tmp_path, segment_bytes=1024)
    assert reopened.last_seq == 60 and reopened.append([{"i": 60}]) == [61]


def test_forget_removes_the_users_ids_from_the_persisted_window(tmp_path):
    clock = Clock()
    s = _store(tmp_path, clock, StateLimits())
    s.append([_ev("secret-evt-1", user="forget-me-7"), _ev("keep-evt", user="keep")])
    s.snapshot()
    assert s.forget("forget-me-7")["events_removed"] == 1
    s.close()
    for root, _, files in os.walk(tmp_path):
        for f in files:
            data = open(os.path.join(root, f), "rb").read()
            assert b"forget-me-7" not in data and b"secret-evt-1" not in data, f
    again = _store(tmp_path, clock, StateLimits())
    assert again.append([_ev("keep-evt", user="keep")]) == ([], ["keep-evt"])


def test_limits_are_validated_with_the_key_named():
    with pytest.raises(ValueError, match="dedup_window_s must be > 0"):
        StateLimits(dedup_window_s=0)
    with pytest.raises(ValueError, match="log_retention_s must be >= 0"):
        StateLimits(log_retention_s=-1)


def test_catalog_size_limit_refuses_new_items_but_not_changes(tmp_path):
    import polars as pl

    from features.errors import CatalogFull
    from features.retrieval.catalog import Catalog, ItemUpdate
    from features.retrieval.index import ItemIndex
    from features.retrieval.live import LiveCatalog, RetrievalConfig

    ids = ["a", "b"]
    vecs = np.eye(2, D, dtype=np.float32)
    cat = Catalog(ids, vecs, pl.DataFrame({"item_id": ids, "title": ["A", "B"]}), {})
    live = LiveCatalog(cat, ItemIndex.build(ids, vecs), tmp_path / "items", RetrievalConfig(max_items=3),
                       fsync=False)
    assert live.upsert(ItemUpdate("c", "C"), vecs[0])[1] is True
    with pytest.raises(CatalogFull, match="limit retriever.max_items=3") as e:
        live.upsert(ItemUpdate("d", "D"), vecs[0])
    assert e.value.field == "item_id"
    assert live.upsert(ItemUpdate("a", "A changed"), vecs[1])[1] is False  # changing an item is always allowed
    reopened = LiveCatalog(Catalog(ids, vecs, pl.DataFrame({"item_id": ids, "title": ["A", "B"]}), {}),
                           ItemIndex.build(ids, vecs), tmp_path / "items", RetrievalConfig(max_items=3))
    assert len(reopened.catalog) == 3 and "d" not in reopened.catalog.row  # nothing of the refused item was logged


def test_the_item_log_is_compacted_however_often_items_change(tmp_path, monkeypatch):
    import polars as pl

    from features.retrieval import live as L
    from features.retrieval.catalog import Catalog, ItemUpdate
    from features.retrieval.index import ItemIndex

    monkeypatch.setattr(L, "COMPACT_SLACK", 10)
    ids = ["a", "b"]
    vecs = np.eye(2, D, dtype=np.float32)

    def open_live():
        cat = Catalog(ids, vecs, pl.DataFrame({"item_id": ids, "title": ["A", "B"]}), {})
        return L.LiveCatalog(cat, ItemIndex.build(ids, vecs), tmp_path / "items", fsync=False)

    live, other = open_live(), open_live()  # two replicas sharing the log
    for i in range(200):
        live.upsert(ItemUpdate("a", f"A v{i}"), vecs[i % 2])
        live.upsert(ItemUpdate(f"new-{i % 3}", f"N v{i}"), vecs[0])
    n_records = sum(1 for _ in live.log.read_after(0))
    assert n_records <= 2 * 4 + 10 + 1  # 4 changed items (a, new-0..2): never 400 records
    other.sync()  # the other replica reads past the rewrites and ends on the same items
    again = open_live()
    for cat in (other.catalog, again.catalog):
        assert cat.title[cat.row["a"]] == "A v199" and cat.title[cat.row["new-1"]] == "N v199"
        assert len(cat) == 5
