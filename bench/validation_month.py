"""The full evaluation on the month before the test month, with the catalog's text and with bare ids.

    python -m bench.validation_month [--source data/canonical/online_retail] [--days 30] [--seed 7]
                                     [--out bench/results/evaluation/validation_month.json]

Two questions a reviewer asks of a recommender's published margins, answered without reading a
single test-month event:
- Is the margin a property of the system or of the month it was measured on? The log is cut at
  the start of its test split (`last:<days>d`, the published runs' split), and `jobs.evaluate`
  runs on what is left with the same split, so it tests on the month before (a validation month).
- Does it hold on a catalog of bare ids, as RetailRocket, YooChoose or Diginetica ship them? The
  same cut log, every item id replaced by a random number (`--seed`) that is also the item's
  title, with no description, category or brand: text then carries nothing (the StockCodes of the
  bundled log would: related products share their leading digits), and everything the system
  gains must come from behaviour.
Each set is one `jobs.evaluate` run (about 15-20 minutes on 2 CPUs) in a temporary folder.
Writes, with the commit: every method's NDCG@10 in both settings (next basket, in session), each
run's verdict (the full system against the strongest baseline, paired 95% interval) and the same
on shoppers with a history and on guests, the segments the learned ranker serves, and the
text's own effect: the full system with text minus with bare ids, paired by request.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench.feature_job import machine, write_result
from features.artifacts import git_commit
from features.data import schema as S
from features.evaluation import splits as ES

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "system, learned ranker (full)"


def cut_log(events: pl.DataFrame, days: float) -> tuple[pl.DataFrame, dt.datetime]:
    """The events before the start of the log's `last:<days>d` test split, and that start."""
    plan_at = ES.plan_split(events, ES.SplitSpec.parse(f"last:{days:g}d")).train_until
    return events.filter(pl.col(S.TS) < plan_at), plan_at


def bare_ids(events: pl.DataFrame, items: pl.DataFrame, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The same log and catalog with every item id a random number, which is also its title; no
    description, category or brand (prices, stock and first-seen times kept)."""
    ids = items.get_column(S.ITEM_ID).to_list()
    extra = sorted(set(events.get_column(S.ITEM_ID).drop_nulls().to_list()) - set(ids))
    every = ids + extra
    rng = np.random.default_rng(seed)
    new = [str(x) for x in rng.choice(np.arange(1, 100 * len(every) + 1), size=len(every), replace=False)]
    relabel = dict(zip(every, new))
    items = items.with_columns(pl.col(S.ITEM_ID).replace(relabel)).with_columns(
        pl.col(S.ITEM_ID).alias(S.TITLE),
        *(pl.lit(None, pl.String).alias(c) for c in (S.DESCRIPTION, S.CATEGORY, S.BRAND) if c in items.columns))
    return events.with_columns(pl.col(S.ITEM_ID).replace(relabel)), items


def evaluate(events: Path, items: Path, out: Path, name: str) -> dict:
    from jobs import evaluate as EV

    run_dir = EV.run(EV.EvaluateConfig(events=str(events), items=str(items), output_root=str(out), dataset=name))
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def table(metrics: dict) -> dict:
    rec = metrics["recommend"]
    return {title: {m["method"]: m["ndcg@10"] for m in block["methods"]}
            for title, block in (("next_basket", rec), ("in_session", rec["in_session"]))}


def paired_by_request(a: pl.DataFrame, b: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Two runs' (or methods') per-request NDCG@10 joined by request (shopper and time) as columns
    a and b, with the paired difference a - b ({} when no request is in both)."""
    from features.evaluation.search import paired

    both = a.select(S.USER_ID, "ts", pl.col("ndcg@10").alias("a")).join(
        b.select(S.USER_ID, "ts", pl.col("ndcg@10").alias("b")), on=[S.USER_ID, "ts"])
    return both, paired(both["a"].to_numpy(), both["b"].to_numpy()) if both.height else {}


def by_history(run: Path, baseline: str) -> dict:
    """NDCG@10 of the full system and the strongest baseline on the requests of shoppers with a
    history and of guests (every popularity-backed baseline ranks a guest alike), paired by request."""
    out = {}
    for setting in ("next_basket", "in_session"):
        d = pl.read_parquet(run / "per_request" / f"{setting}.parquet")
        for warm in (True, False):
            both, p = paired_by_request(*(d.filter((pl.col("method") == m) & (pl.col("has_history") == warm))
                                          for m in (SYSTEM, baseline)))
            if p:  # (in session every shopper has the revealed half of the basket: no guests)
                out[f"{setting}_{'with_history' if warm else 'guests'}"] = {
                    "requests": p["queries"], "system": round(float(both["a"].mean()), 4),
                    "baseline": round(float(both["b"].mean()), 4), "difference": p["paired_difference"],
                    "ci95": p["paired_difference_ci95"]}
    return out


def text_effect(with_text: Path, ids: Path) -> dict:
    """The full system with text minus with bare ids, paired by request (the same requests: the
    relabelling changes no shopper or time), from each run's per-request NDCG@10."""
    out = {}
    for setting in ("next_basket", "in_session"):
        _, p = paired_by_request(*(pl.read_parquet(r / "per_request" / f"{setting}.parquet")
                                   .filter(pl.col("method") == SYSTEM) for r in (with_text, ids)))
        out[setting] = {"requests": p["queries"], "difference": p["paired_difference"],
                        "ci95": p["paired_difference_ci95"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(ROOT / "data" / "canonical" / "online_retail"))
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "evaluation" / "validation_month.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    events = pl.read_parquet(Path(args.source) / "events.parquet")
    items = pl.read_parquet(Path(args.source) / "items.parquet")
    cut, at = cut_log(events, args.days)
    print(f"validation_month: {cut.height:,} of {events.height:,} events, those before {at.isoformat()} (the test "
          f"split's start); each run tests on the {args.days:g} days before it", flush=True)
    runs, result = {}, {"commit": git_commit(), "machine": machine(), "source": args.source,
                        "test_split_starts": at.isoformat(), "events_used": cut.height, "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="validation_month_") as tmp:
        d = Path(tmp)
        ev_ids, it_ids = bare_ids(cut, items, args.seed)
        for name, ev, it in (("text", cut, items), ("bare_ids", ev_ids, it_ids)):
            (d / name).mkdir()
            ev.write_parquet(d / name / "events.parquet")
            it.write_parquet(d / name / "items.parquet")
            m = evaluate(d / name / "events.parquet", d / name / "items.parquet", d / name / "runs", name)
            runs[name] = Path(d / name / "runs" / m["run"])
            v = m["recommend"]["verdict"]
            result[name] = {"run": m["run"], "ndcg@10": table(m), "verdict": v,
                            "in_session_verdict": m["recommend"]["in_session"].get("verdict"),
                            "split_at": m["recommend"].get("split_at"),
                            "ranker_serves": m["recommend"].get("ranker", {}).get("serves_learned_for"),
                            "ranker_valid_by_history": m["recommend"].get("ranker", {}).get("valid_by_history"),
                            "by_history_vs_" + v["strongest_baseline"]: by_history(runs[name], v["strongest_baseline"])}
        result["text_minus_bare_ids"] = text_effect(runs["text"], runs["bare_ids"])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_result(args.out, result)
    for name in ("text", "bare_ids"):
        v = result[name]["verdict"]
        print(f"{name}: next basket {v['full_system']:.4f} vs {v['strongest_baseline']} {v['strongest_baseline_value']:.4f}, "
              f"{v['paired_difference']:+.4f} {v['paired_difference_ci95']}")
    print(f"text minus bare ids: {result['text_minus_bare_ids']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
