"""One state folder, one shop (serving/shop_state.py): a deploy over the same shop's newer catalog
keeps the online state; over another shop's catalog it moves the state aside, losing nothing."""

import datetime as dt

from serving import shop_state


def _state(tmp_path):
    state = tmp_path / "state"
    for part in shop_state.PARTS:
        (state / part).mkdir(parents=True)
        (state / part / "log").write_text(part)
    return state


def test_the_same_shop_keeps_its_state_and_another_shop_s_moves_aside(tmp_path):
    state = _state(tmp_path)
    ids = [str(k) for k in range(1000)]
    titles = [f"product {k}" for k in range(1000)]
    assert shop_state.check(state, ids, titles) is None  # first deploy: recorded, nothing to compare
    # The next batch of the same shop: a few items gone, a few new, some renamed.
    assert shop_state.check(state, ids[50:] + ["new 1"], titles[50:900] + ["renamed"] * 100 + ["New"]) is None
    assert (state / "profiles" / "log").read_text() == "profiles"
    # Another shop whose numeric ids are the same: its titles are not.
    now = dt.datetime(2026, 12, 5, 1, 2, 3, tzinfo=dt.timezone.utc)
    said = shop_state.check(state, ids, [f"HAND WARMER {k}" for k in range(1000)], now=now)
    moved = state / "previous" / "20261205T010203Z"
    assert said is not None and "held another catalog's online state (0.0% of its items" in said and str(moved) in said
    assert not (state / "profiles").exists() and not (state / "items").exists()
    assert (moved / "profiles" / "log").read_text() == "profiles" and (moved / "items" / "log").read_text() == "items"
    # The new shop's own next deploy keeps what it has written since.
    (state / "profiles").mkdir()
    assert shop_state.check(state, ids, [f"HAND WARMER {k}" for k in range(1000)]) is None
    assert (state / "profiles").exists()


def test_the_hash_is_stable_and_reads_id_and_title_together():
    h = shop_state.catalog_hashes(["a", "a", "ab"], ["bc", "b", "c"])
    assert len(set(h.tolist())) == 3
    assert shop_state.catalog_hashes(["22633"], ["HAND WARMER"]).tolist() == [8432807453756916939]  # fixed: blake2b, not Python's salted hash
