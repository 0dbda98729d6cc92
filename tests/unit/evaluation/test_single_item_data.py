"""A valid data set whose interactions are single items, without session ids (as many shops' logs):
the leave-last split plans, the in-session set is empty, and the evaluation skips it with a note
in the result, the summary and the report instead of failing the run; its requests are scored with
the popularity of their own time."""

from __future__ import annotations

import datetime as dt
import random

import polars as pl

from features.data import schema as S
from features.evaluation import report as R
from features.evaluation import splits as ES
from features.evaluation.baselines import popularity_scores
from jobs import evaluate


def single_item_log() -> pl.DataFrame:
    rnd = random.Random(0)
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    rows = []
    for u in range(40):
        start = rnd.randrange(30)
        for n in range(10):  # one item every day or two, no session id
            rows.append({S.EVENT_ID: f"e{u}-{n}", S.TS: t0 + dt.timedelta(days=n * 1.5 + u * 0.1), S.USER_ID: f"u{u}",
                         S.SESSION_ID: None, S.EVENT_TYPE: "purchase", S.ITEM_ID: f"p{(start + n * rnd.choice([1, 2])) % 30}",
                         S.QUERY: None, S.QUANTITY: 1, S.PRICE: 1.0})
    return pl.DataFrame(rows)


def test_single_item_interactions_leave_no_in_session_set_and_the_run_says_so():
    events = single_item_log()
    plan = ES.plan_split(events, ES.SplitSpec.parse("leave-last"), 30.0, 3)
    assert plan.test_requests.height == 40  # every shopper's last purchase is a next-basket request
    frame = ES.in_session(plan.test_requests, 0.5)
    assert frame.height == 0  # nothing to reveal: one item per interaction
    cfg = evaluate.EvaluateConfig(split="leave-last")
    st = evaluate._Stages(cfg, plan, events, "unused", "unused", None, "unused", None, None, None, {}, 10)
    block = evaluate._score_set(st, frame, (10,), None)  # returns before any artifact is read
    assert block["requests"] == 0 and "single item" in block["skipped"]
    result = {"run": "r", "seconds": 1.0, "recommend": {
        "dataset": "d", "split": "leave-last", "ks": [10], "catalog_items": 30, "requests": 0, "dropped": 0,
        "methods": [], "verdict": None, "skipped": None, "in_session": block}}
    result["summary"] = evaluate._summary_line(result)
    assert "recommend (next basket) skipped" in result["summary"] and "in session) skipped" in result["summary"]
    assert "skipped: no test request" in evaluate.summary(result)
    page = R.render(result)
    assert "In session: skipped" in page
    # a scored next-basket set of single items says what its "basket" is
    result["recommend"].update(requests=40, relevant_items={"mean": 1.0, "single_item_share": 1.0})
    assert " next basket: 40 requests (100% with one relevant item: " in evaluate.summary(result)
    result["recommend"]["relevant_items"]["single_item_share"] = 0.2
    assert " next basket: 40 requests\n" in evaluate.summary(result)


def test_leave_last_scores_each_request_with_the_popularity_of_its_time():
    """jobs.evaluate's wiring: under leave-last the requests come in time order and the baselines'
    popularity is a function of the request (the clock's, from the training events before it);
    under a time split it is one array of the whole training part."""
    events = single_item_log()
    plan = ES.plan_split(events, ES.SplitSpec.parse("leave-last"), 30.0, 3)
    reqs = ES.build_requests(events, evaluate._in_time_order(plan, plan.test_requests))
    assert list(reqs.ts) == sorted(reqs.ts)
    items = [f"p{k}" for k in range(30)]
    count, recent = evaluate._popularity(plan, plan.train_events, plan.train_until, items, reqs)
    for q in (0, len(reqs) // 2, len(reqs) - 1):
        at = dt.datetime.fromtimestamp(reqs.ts[q], dt.timezone.utc)
        before = plan.train_events.filter(pl.col(S.TS) < at)
        assert list(count(q)) == list(popularity_scores(before, items))
        assert max(abs(a - b) for a, b in zip(recent(q), popularity_scores(before, items, at, 7.0))) < 1e-9
    timed = ES.plan_split(events, ES.SplitSpec.parse("time:2024-01-10T00:00:00Z"), 3.0, 3)
    whole, _ = evaluate._popularity(timed, timed.train_events, timed.train_until, items, reqs)
    assert list(whole) == list(popularity_scores(timed.train_events, items))
