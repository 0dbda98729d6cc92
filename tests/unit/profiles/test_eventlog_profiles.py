"""The durable event log and the nearline profile math/store, on hand-built events."""

from __future__ import annotations

import math
import multiprocessing as mp
import os

import numpy as np
import pytest

from features.profiles.eventlog import LogCorruptError, RecordLog
from features.profiles.events import QUERY_VECTOR, TS_US, encode_vector
from features.profiles.profile import Profile, ProfileParams
from features.profiles.seed import seed_profile
from features.profiles.store import ProfileStore

D = 8


def unit(i: int) -> np.ndarray:
    v = np.zeros(D, np.float32)
    v[i] = 1.0
    return v


# --- event log ---------------------------------------------------------------------------------
def test_log_appends_survive_reopen_in_order(tmp_path):
    log = RecordLog(tmp_path, segment_bytes=1024)
    seqs = [s for i in range(30) for s in log.append([{"n": i, "pad": "x" * 100}])]
    assert seqs == list(range(1, 31))
    assert len(log.segments()) > 1  # rolled over at 1 KiB (between appends: a batch stays in one file)
    log.close()
    again = RecordLog(tmp_path, segment_bytes=1024)
    recs = again.records_on_open()
    assert [r["n"] for r in recs] == list(range(30)) and again.last_seq == 30 and not again.torn
    assert [r["n"] for r in again.read_after(25)] == [25, 26, 27, 28, 29]


def test_torn_tail_is_truncated_and_reported(tmp_path):
    log = RecordLog(tmp_path)
    log.append([{"n": 1}, {"n": 2}])
    seg = log.segments()[-1]
    good = seg.stat().st_size
    with open(seg, "ab") as f:  # a write cut off mid-record (no newline, bad checksum)
        f.write(b'0badc0de {"n": 3, "se')
    reopened = RecordLog(tmp_path)
    assert [r["n"] for r in reopened.records_on_open()] == [1, 2]
    assert len(reopened.torn) == 1 and reopened.torn[0].offset == good and reopened.torn[0].discarded_bytes == 21
    assert seg.stat().st_size == good
    assert reopened.append([{"n": 3}]) == [3]  # appends continue after the cut
    assert [r["n"] for r in RecordLog(tmp_path).records_on_open()] == [1, 2, 3]


def test_corruption_in_the_middle_is_refused_not_guessed(tmp_path):
    log = RecordLog(tmp_path)
    log.append([{"n": 1}, {"n": 2}, {"n": 3}])
    seg = log.segments()[-1]
    data = bytearray(seg.read_bytes())
    data[12] ^= 0xFF  # flip a byte inside the first record
    seg.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError, match="byte 0"):
        RecordLog(tmp_path)


def test_remove_rewrites_segments_and_keeps_seqs(tmp_path):
    log = RecordLog(tmp_path, segment_bytes=1024)
    for i in range(40):
        log.append([{"user": "a" if i % 3 == 0 else "b", "i": i, "pad": "y" * 80}])
    assert log.remove(lambda r: r["user"] == "a") == 14
    for seg in log.segments():
        assert b'"user":"a"' not in seg.read_bytes()
    recs = RecordLog(tmp_path).records_on_open()
    assert [r["i"] for r in recs] == [i for i in range(40) if i % 3]
    assert [r["seq"] for r in recs] == [i + 1 for i in range(40) if i % 3]


def _append_many(path: str, tag: str, n: int) -> None:
    log = RecordLog(path, fsync=False)
    for i in range(n):
        log.append([{"w": tag, "i": i}])


def test_concurrent_writers_get_unique_seqs_and_readers_see_both(tmp_path):
    reader = RecordLog(tmp_path)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), t, 200)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    recs = reader.refresh()
    assert sorted(r["seq"] for r in recs) == list(range(1, 401))
    for t in "ab":  # each writer's records in its own order
        assert [r["i"] for r in recs if r["w"] == t] == list(range(200))


# --- profile math --------------------------------------------------------------------------------
P = ProfileParams(intent_half_life_s=100.0, preference_half_life_days=1.0, session_gap_s=1000.0, alpha_max=0.8)


def test_fold_is_the_decayed_weighted_mean_by_hand():
    prof = Profile("u")
    prof.fold("view", 0.0, P, vector=unit(0), item_id="a")
    prof.fold("purchase", 100.0, P, vector=unit(1), item_id="b")
    # intent at t=100: view (w=1) halved once, purchase (w=4) fresh
    assert np.allclose(prof.intent_sum, 0.5 * unit(0) + 4 * unit(1))
    want = (0.5 * unit(0) + 4 * unit(1)) / math.hypot(0.5, 4)
    assert np.allclose(prof.intent(), want, atol=1e-6)
    # preference half-life is a day: 100 s barely decays
    f = 0.5 ** (100 / 86400)
    assert np.allclose(prof.pref_sum, f * unit(0) + 4 * unit(1))
    assert prof.recent_items[0][:2] == ("b", "purchase") and prof.purchased == ["b"]


def test_fold_does_not_depend_on_arrival_order():
    events = [("view", 10.0, 0, "a"), ("click", 50.0, 1, "b"), ("add_to_cart", 80.0, 2, "c")]
    in_order, shuffled = Profile("u"), Profile("u")
    for t, ts, i, item in events:
        in_order.fold(t, ts, P, vector=unit(i), item_id=item)
    for t, ts, i, item in [events[2], events[0], events[1]]:
        shuffled.fold(t, ts, P, vector=unit(i), item_id=item)
    assert np.allclose(in_order.intent_sum, shuffled.intent_sum)
    assert np.allclose(in_order.pref_sum, shuffled.pref_sum)
    assert in_order.recent_items == shuffled.recent_items


def test_alpha_rises_with_session_freshness_and_new_session_resets_intent():
    prof = Profile("u")
    prof.fold("view", 0.0, P, vector=unit(0), item_id="a")
    assert prof.alpha(0.0, P) == pytest.approx(0.8)
    assert prof.alpha(100.0, P) == pytest.approx(0.4)  # one intent half-life later
    prof.fold("view", 5000.0, P, vector=unit(3), item_id="d")  # after session_gap_s: new session
    assert np.allclose(prof.intent(), unit(3))
    u, a = prof.user_vector(5000.0, P)
    want = 0.8 * unit(3) + 0.2 * prof.preference()
    assert np.allclose(u, want / np.linalg.norm(want), atol=1e-6)


def test_search_events_move_intent_not_preference():
    prof = Profile("u")
    prof.fold("search", 0.0, P, vector=unit(5), query="red mug")
    assert prof.preference() is None and np.allclose(prof.intent(), unit(5))
    assert prof.recent_queries == [("red mug", 0.0)]
    assert prof.user_vector(0.0, P)[1] == 1.0  # only an intent: it is the whole vector


def test_an_item_event_with_its_query_is_that_search_too():
    """A log that records each click with the search it came from: the query moves the session's
    intent and is remembered, as a search event would; the click folds the item as usual."""
    from features.profiles.events import fold_event

    lookup = {"a": (unit(0), "Home", 2.0)}.get
    both = Profile("u")
    fold_event(both, "click", 0.0, P, lookup, item_id="a", query="red mug", query_vector=unit(5))
    apart = Profile("u")
    fold_event(apart, "search", 0.0, P, lookup, query="red mug", query_vector=unit(5))
    fold_event(apart, "click", 0.0, P, lookup, item_id="a")
    assert both.recent_queries == apart.recent_queries == [("red mug", 0.0)]
    assert np.allclose(both.intent(), apart.intent()) and not np.allclose(both.intent(), unit(0))
    assert np.allclose(both.preference(), unit(0)) and both.recent_items == apart.recent_items


def test_category_and_price_affinity():
    prof = Profile("u")
    prof.fold("purchase", 0.0, P, vector=unit(0), item_id="a", category="Home", price=math.e - 1)
    prof.fold("view", 0.0, P, vector=unit(1), item_id="b", category="Toys", price=math.e ** 3 - 1)
    aff = prof.category_affinity()
    assert aff == pytest.approx({"Home": 0.8, "Toys": 0.2})
    mean, std = prof.price_stats()
    assert mean == pytest.approx((4 * 1 + 1 * 3) / 5)
    assert std == pytest.approx(math.sqrt((4 * 1 + 1 * 9) / 5 - mean ** 2))


def test_profile_round_trips_through_json():
    prof = Profile("u")
    prof.fold("purchase", 1.0, P, vector=unit(0), item_id="a", category="Home", price=3.0)
    prof.fold("search", 2.0, P, vector=unit(2), query="q")
    back = Profile.from_dict(prof.to_dict())
    assert np.array_equal(back.intent_sum, prof.intent_sum) and back.to_dict() == prof.to_dict()


def test_seed_replays_recent_items_like_live_events():
    lookup = {"a": (unit(0), "Home", 2.0), "b": (unit(1), None, None)}
    seeded = seed_profile("u", ["b", "a"], ["view", "purchase"], [20.0, 10.0], ["mug"], lookup.get, P)
    live = Profile("u")
    live.fold("purchase", 10.0, P, vector=unit(0), item_id="a", category="Home", price=2.0)
    live.fold("view", 20.0, P, vector=unit(1), item_id="b")
    assert np.allclose(seeded.pref_sum, live.pref_sum) and seeded.recent_items == live.recent_items
    assert seeded.recent_queries == [("mug", 20.0)]


# --- profile store -------------------------------------------------------------------------------
CATALOG = {f"i{k}": (unit(k % D), f"cat{k % 2}", float(k + 1)) for k in range(20)}


def _ev(user: str, item: str | None, t: float, etype: str = "view", eid: str | None = None, **kw) -> dict:
    return {"event_id": eid, "user_id": user, "event_type": etype, "item_id": item, TS_US: int(t * 1e6), **kw}


def _store(path, **kw) -> ProfileStore:
    return ProfileStore(path, P, lambda i: CATALOG.get(i, (None, None, None)), fsync=False, **kw)


def test_store_acknowledged_events_survive_restart_without_snapshot(tmp_path):
    s = _store(tmp_path, snapshot_every_events=10**9, snapshot_every_s=1e9)
    s.append([_ev("u1", "i1", 1.0), _ev("u1", "i2", 2.0, "purchase"), _ev("u2", "i3", 3.0)])
    before = s.get("u1").to_dict()
    del s  # a crash: nothing written to the snapshot
    again = _store(tmp_path)
    assert again.stats["replayed"] == 3
    assert again.get("u1").to_dict() == before
    assert again.get("u2").recent_items[0][0] == "i3"


def test_a_newer_features_version_reseeds_but_keeps_every_live_profile(tmp_path):
    """Serving the next batch (or another shop's data deployed where the demo ran) refreshes the
    seeded shoppers and adds its new ones; a shopper with live events keeps the nearline profile;
    the same version twice changes nothing."""
    def seeds(*users: str, item: str = "i1") -> list[Profile]:
        return [seed_profile(u, [item], ["purchase"], [1.0], [], lambda i: CATALOG.get(i, (None, None, None)), P)
                for u in users]

    s = _store(tmp_path)
    assert s.seed(seeds("old-shopper", "both"), "features/v1") == 2
    s.append([_ev("live", "i3", 5.0), _ev("both", "i4", 6.0)])  # "both" has a live event now
    assert s.seed(seeds("old-shopper", "both"), "features/v1") == 0  # same version: nothing
    assert s.seed(seeds("new-shopper", "both", "old-shopper", item="i2"), "features/v2") == 2
    assert s.get("new-shopper").recent_items[0][0] == "i2"  # a shopper of the new data is known
    assert s.get("old-shopper").recent_items[0][0] == "i2"  # a seed is refreshed
    assert [r[0] for r in s.get("both").recent_items] == ["i4", "i1"]  # live: the nearline profile stays
    assert s.get("live").recent_items[0][0] == "i3" and s.seeded_from == "features/v2"
    again = _store(tmp_path)  # and all of it survives a restart
    assert again.get("new-shopper").recent_items[0][0] == "i2" and again.seeded_from == "features/v2"
    # another shop's data on the same state: a seed the new version lacks is gone, live profiles stay
    assert again.seed(seeds("new-shopper", item="i5"), "features/v3") == 1
    assert again.get("old-shopper") is None and again.get("new-shopper").recent_items[0][0] == "i5"
    assert again.get("live") is not None and [r[0] for r in again.get("both").recent_items] == ["i4", "i1"]


def test_store_dedups_event_ids_across_restarts(tmp_path):
    s = _store(tmp_path)
    assert s.append([_ev("u", "i1", 1.0, eid="e1"), _ev("u", "i2", 2.0, eid="e1")]) == (["e1"], ["e1"])
    s.close()
    again = _store(tmp_path)
    assert again.append([_ev("u", "i1", 3.0, eid="e1")]) == ([], ["e1"])
    assert again.get("u").n_events == 1


def test_evicted_profiles_reload_and_replay_never_double_folds(tmp_path):
    s = _store(tmp_path, max_users_in_memory=2, snapshot_every_events=10**9, snapshot_every_s=1e9)
    for k in range(6):
        s.append([_ev(f"u{k}", f"i{k}", float(k)), _ev(f"u{k}", f"i{k + 1}", float(k) + 0.5, "purchase")])
    assert s.in_memory() == 2 and s.stats["evicted"] == 4
    expected = {f"u{k}": s.get(f"u{k}").to_dict() for k in range(6)}
    del s  # evicted rows are in the snapshot with their seq; the log tail replays over them
    again = _store(tmp_path, max_users_in_memory=2)
    for u, d in expected.items():
        got = again.get(u).to_dict()
        assert got == d, u
        assert got["n_events"] == 2


def test_search_event_vector_comes_from_the_log(tmp_path):
    s = _store(tmp_path)
    s.append([_ev("u", None, 1.0, "search", query="red mug", **{QUERY_VECTOR: encode_vector(unit(4))})])
    del s
    assert np.allclose(_store(tmp_path).get("u").intent(), unit(4))


def test_forget_leaves_no_trace_in_any_file(tmp_path):
    s = _store(tmp_path, snapshot_every_events=1)
    s.append([_ev("forget-me-42", "i1", 1.0, eid="secret-event-1"), _ev("keep", "i2", 2.0)])
    s.snapshot()
    assert s.forget("forget-me-42") == {"events_removed": 1, "profile_removed": 1}
    assert s.forget("forget-me-42") is None
    s.close()
    for root, _, files in os.walk(tmp_path):
        for f in files:
            data = open(os.path.join(root, f), "rb").read()
            assert b"forget-me-42" not in data and b"secret-event-1" not in data, f
    again = _store(tmp_path)
    assert again.get("forget-me-42") is None and again.get("keep") is not None
