"""Search judgments from a file (validated, fractional grades kept) and from the event log (a
search followed in its session by a click, cart or purchase, within the window)."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from features.data.judgments import judgments_from_events, read_judgments


def _t(minute: int) -> dt.datetime:
    return dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=minute)


def test_the_log_judges_what_followed_each_search_in_its_session():
    ev = pl.DataFrame({
        "user_id": ["u1"] * 6 + ["u2"] * 3,
        "session_id": ["s1", "s1", "s1", "s1", "s1", "s2", None, None, None],
        "ts": [_t(0), _t(1), _t(2), _t(3), _t(4), _t(5), _t(0), _t(1), _t(50)],
        "event_type": ["search", "click", "purchase", "search", "view", "click", "search", "add_to_cart", "click"],
        "item_id": [None, "a", "a", None, "b", "c", None, "c", "d"],
        "query": ["Red Mug ", None, None, "lamp", None, None, "red mug", None, None]})
    got = {(q, i): (g, n) for q, i, g, n in judgments_from_events(ev, window_s=1800).iter_rows()}
    # "a": clicked then bought after "Red Mug" (best grade kept, seen twice); "c": carted by u2 after
    # "red mug" (no session id: the shopper is the session); a view is no judgment; "c" clicked in
    # s2 had no search before it in s2; "d" came 49 minutes after the search
    assert got == {("red mug", "a"): (4.0, 2), ("red mug", "c"): (3.0, 1)}
    assert judgments_from_events(ev.drop("session_id"), window_s=60).height == 2
    none = judgments_from_events(ev.drop("query"))  # the query column is optional: no searches, no judgments
    assert none.height == 0 and none.columns == ["query", "item_id", "grade", "n"]


def test_an_action_that_carries_its_query_is_judged_for_it():
    """Logs that record each click with the search it came from (one row per click, no separate
    search event) judge those clicks; the query stays in effect for what follows, as a search's does."""
    ev = pl.DataFrame({
        "user_id": ["u1", "u1", "u1", "u2", "u2"],
        "session_id": [None] * 5,
        "ts": [_t(0), _t(1), _t(2), _t(0), _t(40)],
        "event_type": ["click", "click", "purchase", "click", "click"],
        "item_id": ["a", "b", "b", "c", "d"],
        "query": ["Xbox ", "halo", None, "  ", None]})
    got = {(q, i): g for q, i, g, _ in judgments_from_events(ev, window_s=1800).iter_rows()}
    # u2's blank query names nothing; "d" came 40 minutes after u2's click and there is no query anyway
    assert got == {("xbox", "a"): 2.0, ("halo", "b"): 4.0}


def test_a_judgments_file_is_validated_and_keeps_fractional_grades(tmp_path):
    ok = tmp_path / "j.csv"
    pl.DataFrame({"query": ["mug", "mug"], "item_id": ["a", "b"], "grade": [2.33, 4]}).write_csv(ok)
    assert read_judgments(str(ok))["grade"].to_list() == [2.33, 4.0]
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"query": ["mug"], "item_id": ["a"], "grade": [7.0]}).write_parquet(bad)
    with pytest.raises(ValueError, match=r"grade outside 1\.\.4, e\.g\. query='mug' item_id='a' grade=7\.0"):
        read_judgments(str(bad))
    zeros = tmp_path / "z.csv"
    zeros.write_text("query,item_id,grade\nmug,00123,4\n")  # ids as written, not as numbers
    assert read_judgments(str(zeros)).rows() == [("mug", "00123", 4.0)]
    words = tmp_path / "w.csv"
    words.write_text("query,item_id,grade\nmug,a,good\n")
    with pytest.raises(ValueError, match=r"1 row\(s\) with a grade that is not a number, e\.g\. .*grade='good'"):
        read_judgments(str(words))
    missing = tmp_path / "m.parquet"
    pl.DataFrame({"query": ["mug"], "item": ["a"]}).write_parquet(missing)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['item_id', 'grade'\]"):
        read_judgments(str(missing))
