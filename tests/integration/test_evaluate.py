"""jobs.evaluate end to end through Ray on a small slice of the bundled log, with a small
judgments file built from the slice's titles: every stage trains inside the run folder, every
method is scored, the report and metrics are written, and no stage saw the test period."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from features.data import schema as S
from features.evaluation.splits import interactions
from jobs import evaluate, import_online_retail

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
QUERIES = ("lunch bag", "christmas", "heart", "cake stand", "candle")


@pytest.fixture(scope="module")
def slice_(tmp_path_factory):
    base = tmp_path_factory.mktemp("evalslice")
    canon = base / "canonical"
    import_online_retail.run(import_online_retail.ImportConfig(input=str(ROOT / "data/online_retail.parquet"),
                                                               output=str(canon)))
    events = pl.read_parquet(canon / "events.parquet")
    end = events[S.TS].max()
    recent = events.filter(pl.col(S.TS) > end - dt.timedelta(days=75))
    users = recent.select(S.USER_ID).unique().sort(S.USER_ID).sample(150, seed=1)
    ev = recent.join(users, on=S.USER_ID)
    items = pl.read_parquet(canon / "items.parquet").join(ev.select(S.ITEM_ID).unique(), on=S.ITEM_ID)
    ev.write_parquet(base / "events.parquet")
    items.write_parquet(base / "items.parquet")
    rows = []
    for q in QUERIES:
        words = q.split()
        for item_id, title in items.select(S.ITEM_ID, S.TITLE).iter_rows():
            t = title.lower()
            hits = sum(w in t for w in words)
            if hits or len(rows) % 7 == 0:
                rows.append((q, item_id, 4.0 if hits == len(words) else 2.5 if hits else 1.0))  # averaged grades too
    pl.DataFrame(rows, schema={"query": pl.String, S.ITEM_ID: pl.String, "grade": pl.Float64}, orient="row").write_parquet(
        base / "judgments.parquet")
    return base, end


@pytest.fixture(scope="module")
def evaluated(ray_local, slice_, tmp_path_factory):
    """One evaluate run on the slice (the encoder fine-tune is off here: tests/integration/
    test_job_submit.py trains the encoder; this run keeps make test within its budget)."""
    base, end = slice_
    split_at = (end - dt.timedelta(days=14)).replace(microsecond=0)
    cfg = evaluate.EvaluateConfig(
        events=str(base / "events.parquet"), items=str(base / "items.parquet"), judgments=str(base / "judgments.parquet"),
        split=f"time:{split_at.isoformat()}", ranker_days=14, ks=(5, 10), output_root=str(tmp_path_factory.mktemp("runs")),
        encoder=evaluate.EncoderStage(fine_tune=False),
        sasrec=evaluate.SQ.SequenceParams(text=False, events=False, dim=16, heads=2, layers=1, max_epochs=2),
        sequence=evaluate.SequenceStage(trainer="local",  # Ray Train is covered by e2e and the pipeline test
                                       model=evaluate.SQ.SequenceParams(dim=16, heads=2, layers=1, max_epochs=2)),
        search=evaluate.SearchEval(folds=2, candidates=50, unjudged_negatives=10),
        ranker=evaluate.RankerParams(num_rounds=20, min_data_in_leaf=5))
    return Path(evaluate.run(cfg)), split_at


def test_evaluate_slice_end_to_end(evaluated, slice_):
    base, _ = slice_
    run_dir, split_at = evaluated
    result = json.loads((run_dir / "metrics.json").read_text())
    page = (run_dir / "report.html").read_text()
    assert page.count("<svg") >= 6 and "SASRec" in page

    rec = result["recommend"]
    names = [m["method"] for m in rec["methods"]]
    assert names == ["popularity", "recent popularity (7d half-life)", "co-occurrence",
                     "co-occurrence + recent popularity", "EASE (item-to-item regression)", "ALS (matrix factorisation)",
                     "SASRec (ID only)", "zero-shot encoder",
                     "sequence model (text + ID)", "system, hand-set weights", "system, learned ranker (full)"]
    assert result["status"] == "complete"
    # choices made on the ranker requests (before the test period), and used
    ch = rec["validation_choices"]
    assert ch["requests"] > 0 and ch["fallback"] in ("all-time", "recent")
    assert ch["blend_valid_ndcg@10"][str(ch["blend_weight"])] == max(ch["blend_valid_ndcg@10"].values())
    assert ch["fallback"] in next(m for m in rec["methods"] if m["method"] == "co-occurrence")["note"]
    f, r = ch["als"]  # the ALS baseline's factors and regularization: the best on the validation requests
    assert ch["als_valid_ndcg@10"][f"{f} factors, regularization {r:g}"] == max(ch["als_valid_ndcg@10"].values())
    assert f"{f} factors, regularization {r:g}, chosen on validation" in rec["methods"][names.index("ALS (matrix factorisation)")]["note"]
    # every method has an interval; the verdict is a paired interval, "beats" only when it excludes 0
    v = rec["verdict"]
    for m in rec["methods"]:
        lo, hi = m["ci95"]["ndcg@10"]
        assert lo <= m["ndcg@10"] <= hi
    lo, hi = v["paired_difference_ci95"]
    assert lo <= v["paired_difference"] <= hi and v["full_beats_strongest_baseline"] == (lo > 0)
    assert not v["strongest_baseline"].startswith(("system", "sequence model"))
    assert "sequence_vs_sasrec" in v
    per = pl.read_parquet(run_dir / "per_request" / "next_basket.parquet")
    assert per.height == rec["requests"] * len(names)
    full = per.filter(pl.col("method") == names[-1])["ndcg@10"].mean()
    assert full == pytest.approx(rec["methods"][-1]["ndcg@10"], abs=1e-5)
    # a segment the learned ranker did not win on validation is ranked exactly as the hand weights rank it
    rows = {m: per.filter(pl.col("method") == m) for m in names[-2:]}  # each in request order
    assert rows[names[-1]]["has_history"].to_list() == rows[names[-2]]["has_history"].to_list()
    for segment, warm in (("with_history", True), ("without_history", False)):
        if segment not in rec["ranker"]["serves_learned_for"]:
            same = [r.filter(pl.col("has_history") == warm)["ndcg@10"].to_list() for r in rows.values()]
            assert same[0] == same[1]
    # the behaviour model: trained by its Ray Train job, early-stopped on validation, used as a feature
    assert rec["sequence"]["epochs"] >= rec["sequence"]["best_epoch"] >= 1 and rec["sasrec"]["epochs"] >= 1
    assert (Path(rec["stages"]["sequence"]) / "model.safetensors").is_file()
    assert {"seq_score", "seq_rank", "category_recency", "ease"} <= set(rec["ranker"]["importances"])
    assert rec["notes"]["fine-tuned encoder"] == "encoder.fine_tune=false"
    assert rec["requests"] > 20 and rec["in_session"]["requests"] > 5
    for block in (rec["methods"], rec["in_session"]["methods"]):
        for m in block:
            for k in (5, 10):
                assert 0 <= m[f"ndcg@{k}"] <= m[f"hit_rate@{k}"] <= 1 and 0 <= m[f"coverage@{k}"] <= 1
            assert m["latency_ms"]["p50"] > 0
    assert set(rec["verdict"]) >= {"full_beats_strongest_baseline", "learned_beats_hand"}
    # a learned model on disk, text, with importances; every artifact inside the run folder
    ranker_dir = Path(rec["ranker"]["path"])
    assert (ranker_dir / "recommend" / "model.txt").read_text().startswith("tree")
    assert set(rec["ranker"]["importances"]) >= {"cooc", "intent_sim", "popularity"}
    # the full system uses it only for the shoppers it beat the hand weights on, and says so otherwise
    assert ("learned ranker" in rec["notes"]) == (rec["ranker"]["serves_learned_for"] != ["with_history", "without_history"])
    for stage in rec["stages"].values():
        assert stage is None or str(run_dir) in stage
    # no stage saw the test period: both feature versions end before the split, the ranker's
    # stage before its label window
    for key, limit in (("features", split_at), ("features_ranker_stage", split_at - dt.timedelta(days=14))):
        m = json.loads((Path(rec["stages"][key]) / "manifest.json").read_text())
        assert dt.datetime.fromisoformat(m["metrics"]["as_of"]) < limit
    train_ev = pl.read_parquet(run_dir / "data" / "train" / "events.parquet")
    assert train_ev[S.TS].max() < split_at
    first_test = interactions(pl.read_parquet(base / "events.parquet")).filter(pl.col(S.TS) >= split_at)
    assert first_test.height and not set(train_ev[S.EVENT_ID]) & set(
        pl.read_parquet(base / "events.parquet").filter(pl.col(S.TS) >= split_at)[S.EVENT_ID])

    srch = result["search"]
    assert srch["queries"] == len(QUERIES)
    assert [m["method"] for m in srch["full_catalog"]][-1] == "system, learned ranker (CV)"
    # the title-match judgments are easy: lexical matching must find them
    bm25 = next(m for m in srch["rerank"] if m["method"] == "BM25F (fields, stemming, typos)")
    assert bm25["ndcg@10"] > 0.8
    for setting in ("rerank", "full_catalog"):  # every method with a 95% interval around its mean
        for m in srch[setting]:
            lo, hi = m["ci95"]["ndcg@10"]
            assert lo <= m["ndcg@10"] <= hi
        v = srch["verdict"][setting]
        assert v["full_beats_strongest_baseline"] == (v["paired_difference_ci95"][0] > 0)
    # Each fold's learned model is used only where it beats the hand weights on its validation
    # queries (paired interval above 0), and its query adapter only where its out-of-fold scores
    # (k-fold CV inside the fitting queries) beat zero-shot's.
    assert len(srch["ranker_folds"]) == 2
    for fold in srch["ranker_folds"]:
        assert list(fold["seconds"]) == ["adapter", "fusion", "match weights", "ranker lists"]
        assert fold["valid_folds"] >= 2  # the learned ranker judged out of fold on all training queries
        assert all(v >= 0 for v in fold["seconds"].values())
        won = fold["valid_learned_vs_hand"]
        assert fold["uses"] == ("learned" if won["paired_difference_ci95"][0] > 0 else "hand weights") and won["queries"] >= 1
        qa = fold["query_adapter"]
        cv = qa.get("cross_validated_vs_zero_shot")
        assert qa["used"] == (cv is not None and cv["paired_difference_ci95"][0] > 0)
        assert cv is not None or "too few to cross-validate" in qa["why_not"]
        # the fitted fusion is used only where fitting beat the configured one out of fold
        fz = fold["fusion_choice"]
        assert fold["fusion"] == (fz["fitted"] if fz["kept"] else "rrf, k=60")
        assert fz["kept"] == ("cross_validated_vs_configured" in fz and fz["cross_validated_vs_configured"]["beats"])
        sw = fold["search_weights"]  # and the search ranking's match weights the same way
        cv = sw.get("cross_validated_vs_configured")
        assert sw["kept"] == bool(cv is not None and cv["beats"] and sw["fitted"])
    per = pl.read_parquet(run_dir / "per_query" / "search.parquet")
    assert per.height == 2 * len(srch["full_catalog"]) * len(QUERIES)
    sys_full = per.filter((pl.col("setting") == "full_catalog") & (pl.col("method") == "system, learned ranker (CV)"))
    assert sys_full["ndcg@10"].drop_nans().mean() == pytest.approx(srch["full_catalog"][-1]["ndcg@10"], abs=1e-5)


def test_bad_inputs_fail_with_a_clear_message_and_exit_code(ray_local, slice_, tmp_path, capsys):
    base, _ = slice_
    code = evaluate.main(["--set", f"events={base / 'events.parquet'}", "--set", f"items={base / 'items.parquet'}",
                          "--set", "split=time:2001-01-01T00:00:00Z", "--set", f"output_root={tmp_path}"])
    assert code == 2
    assert "must fall after the first" in capsys.readouterr().err
    (metrics,) = tmp_path.glob("*/metrics.json")  # the run's file says it failed, where and why; no result
    m = json.loads(metrics.read_text())
    assert m["status"].startswith("failed in 'plan the split': ValueError:") and "must fall after the first" in m["status"]
    assert "recommend" not in m and "summary" not in m


def test_a_run_stopped_midway_says_where_and_keeps_the_finished_stages(ray_local, slice_, tmp_path, monkeypatch):
    base, _ = slice_

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(evaluate, "_index", broken)  # the stage after the two feature jobs fails
    cfg = evaluate.EvaluateConfig(events=str(base / "events.parquet"), items=str(base / "items.parquet"),
                                  output_root=str(tmp_path), encoder=evaluate.EncoderStage(fine_tune=False))
    with pytest.raises(OSError, match="No space left"):
        evaluate.run(cfg)
    (metrics,) = tmp_path.glob("*/metrics.json")
    m = json.loads(metrics.read_text())
    assert m["status"] == "failed in 'zero-shot index (Ray Data)': OSError: No space left on device"
    assert m["config"]["events"] == cfg.events  # what was run, for a replay (bench/ranker_ablation.py reads it)
    stages = m["recommend_partial"]["stages"]
    assert set(stages) == {"features_ranker_stage", "features"}
    assert all((Path(path) / "manifest.json").is_file() for path in stages.values())


def test_train_ranker_job_learns_from_the_window_after_the_features(evaluated, slice_, tmp_path):
    """The standalone job (`make ranker` in small) on the evaluate run's stages: its ranker-stage
    features (as of 14 days before the split) and its zero-shot index."""
    from features import artifacts as A
    from jobs import train_ranker

    run_dir, split_at = evaluated
    base, _ = slice_
    stages = json.loads((run_dir / "metrics.json").read_text())["recommend"]["stages"]
    art = tmp_path / "artifacts"
    out = Path(train_ranker.run(train_ranker.TrainRankerConfig(
        events=str(base / "events.parquet"), items=str(base / "items.parquet"), output_root=str(art),
        features=stages["features_ranker_stage"], index=stages["index_zero_shot"], window_days=14,
        lightgbm=evaluate.RankerParams(num_rounds=20, min_data_in_leaf=5))))
    assert A.latest_complete(str(art), "ranker") == str(out)
    m = json.loads((out / "manifest.json").read_text())
    x = m["metrics"]
    assert m["inputs"]["features"]["as_of"] < (split_at - dt.timedelta(days=14)).isoformat()
    assert m["inputs"]["label_window_end"] <= split_at.isoformat()
    assert x["train_lists"] > 10 and x["valid_lists"] > 0 and 0 <= x["valid_ndcg@10_learned"] <= 1
    # the valid lists split into shoppers with and without a history, each compared on its own
    seg = x["valid_by_history"]
    assert seg["with_history"]["lists"] + seg["without_history"]["lists"] == x["valid_lists"]
    for part in seg.values():
        if part["lists"]:
            lo, hi = part["paired_difference_ci95"]
            assert lo <= part["learned"] - part["hand_weights"] + 1e-6
            assert part["beats"] == (lo > 0 and part["lists"] >= 30) and part["too_few_lists"] == (part["lists"] < 30)
    # ... and the model is used (in serving and evaluation) for exactly the segments it beat
    assert x["serves_learned_for"] == [name for name, part in seg.items() if part["beats"] and name == "with_history"]
    assert sum(v["gain_share"] for v in m["outputs"]["importances"]["recommend"].values()) == pytest.approx(1, abs=1e-3)
    assert m["outputs"]["format"] == "lightgbm text"



def test_train_search_fits_on_judgments_and_serving_picks_it_for_its_index(evaluated, slice_):
    """jobs.train_search on the slice's judgments against the run's zero-shot index: a version
    that says what it kept (the adapter only where it beat zero-shot in cross-validation), found by
    serving for that index and applied to its query encoder and fusion."""
    from features.models.query_adapter import AdaptedEncoder, read_search_version
    from jobs import train_search
    from serving.encoder import load_query_encoder
    from serving.settings import ServingConfig, resolve

    run_dir, _ = evaluated
    base, _ = slice_
    rec = json.loads((run_dir / "metrics.json").read_text())["recommend"]
    index_dir = Path(rec["stages"]["index_zero_shot"])
    root = index_dir.parent.parent
    out = Path(train_search.run(train_search.TrainSearchConfig(
        judgments=str(base / "judgments.parquet"), events=None, index=str(index_dir), output_root=str(root),
        min_queries=2, valid_share=0.4, adapter=train_search.QA.AdapterParams(max_epochs=5, patience=2))))
    adapter, spec = read_search_version(out)
    m = spec["metrics"]
    assert spec["fitted"] and m["queries"] == len(QUERIES) and m["valid"]["queries"] == 2
    cv = m["adapter"]["cross_validated_vs_zero_shot"]  # 3 fitting queries, 3-fold CV over them
    assert spec["adapter"] == m["adapter"]["used"] == cv["beats"] == (adapter is not None) and cv["queries"] == 3
    assert m["fusion"]["kept"] == m["fusion"]["cross_validated_vs_configured"]["beats"]
    assert (spec["fusion"] == {"method": "rrf", "rrf_k": 60, "ann_weight": 0.5}) or m["fusion"]["kept"]
    w = m["search_weights"]
    assert spec["search_weights"] == (w["fitted"] if w["kept"] else {})
    line = train_search.summary(spec, m)  # the job's last line says what it kept, why, and what it buys
    assert ("query adapter kept" if spec["adapter"] else "query adapter not used") in line and "on 2 held-out queries" in line
    from features.evaluation.search import describe_weights

    assert (f"{describe_weights(w['fitted'])} kept" if w["kept"] else "match weights as configured") in line
    v = m["valid"]  # the held-out queries report the choice against zero-shot with the configured fusion
    assert v["queries"] == 2 and v["chosen_vs_zero_shot_configured"]["paired_difference"] == pytest.approx(
        v["chosen"] - v["zero_shot_configured_fusion"], abs=2e-6)
    r = v["ranked"]  # ... and ranked as serving ranks, with the configured weights
    assert r["chosen_vs_zero_shot_configured"]["paired_difference"] == pytest.approx(r["chosen"] - r["zero_shot_configured"], abs=2e-6)
    assert spec["adapter"] == (out / "query_adapter.safetensors").is_file()
    assert spec["fusion"]["method"] in ("rrf", "weighted")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["index"]["version"] == index_dir.name
    # serving, with this index: the version is found, and its adapter (if any) follows the query tower
    cfg = ServingConfig(artifacts_root=str(root), index=str(index_dir), state_dir=str(run_dir / "state"))
    res = resolve(cfg)
    assert res.search_dir == str(out.resolve()) and res.versions["search"] == out.name
    enc, _ = load_query_encoder(cfg, res)
    assert isinstance(enc, AdaptedEncoder) == spec["adapter"]
    from features.retrieval.fusion import FusionParams
    from serving.retriever import open_live_catalog

    live = open_live_catalog(cfg, res, lexical=True)
    f = spec["fusion"]
    assert live.cfg.fusion_params() == FusionParams(f["method"], f["rrf_k"], f["ann_weight"])
    # its fitted match weights join the configured search weights (a copy of the version with them set)
    import dataclasses
    import shutil

    from serving.ranker import search_weights

    for name in ("title_match", "head_match"):
        assert search_weights(cfg, res).search.get(name, 0.0) == spec["search_weights"].get(name, 0.0)
    fitted = root / "search_with_title_weight"
    shutil.copytree(out, fitted)
    (fitted / "search.json").write_text(json.dumps(spec | {"search_weights": {"title_match": 0.4, "head_match": 0.2}}))
    hw = search_weights(cfg, dataclasses.replace(res, search_dir=str(fitted)))
    assert hw.search == {**cfg.ranker.weights.search, "title_match": 0.4, "head_match": 0.2} and hw.recommend == cfg.ranker.weights.recommend
    assert resolve(ServingConfig(artifacts_root=str(root), index=str(index_dir), search="none")).search_dir is None
    # too few judged queries: nothing fitted, and the version says why
    few = Path(train_search.run(train_search.TrainSearchConfig(
        judgments=str(base / "judgments.parquet"), events=None, index=str(index_dir), output_root=str(root / "few"),
        min_queries=50)))
    _, spec = read_search_version(few)
    assert not spec["fitted"] and not spec["adapter"] and "fewer than min_queries=50" in spec["why_not_fitted"]


def test_search_judged_by_the_logs_searches_without_recommendations(ray_local, slice_, tmp_path):
    """No judgments file: the log's searches followed by a click or purchase judge search
    (`recommend=false` skips the recommendation part); a log with too few says why and completes."""
    base, end = slice_
    items = pl.read_parquet(base / "items.parquet")
    rows = []
    for n, q in enumerate(QUERIES * 2):  # each query searched by two shoppers, who click or buy its title matches
        hits = [i for i, t in items.select(S.ITEM_ID, S.TITLE).iter_rows() if all(w in t.lower() for w in q.split())][:3]
        t0 = end - dt.timedelta(days=n)
        rows.append({S.EVENT_ID: f"s{n}", S.TS: t0, S.USER_ID: f"searcher{n}", S.EVENT_TYPE: "search", S.ITEM_ID: None, S.QUERY: q})
        rows += [{S.EVENT_ID: f"s{n}-{k}", S.TS: t0 + dt.timedelta(minutes=k + 1), S.USER_ID: f"searcher{n}",
                  S.EVENT_TYPE: "purchase" if k == 0 else "click", S.ITEM_ID: i, S.QUERY: None} for k, i in enumerate(hits)]
    pl.DataFrame(rows).write_parquet(tmp_path / "log.parquet")
    cfg = evaluate.EvaluateConfig(
        events=str(tmp_path / "log.parquet"), items=str(base / "items.parquet"), recommend=False, ks=(5, 10),
        output_root=str(tmp_path / "runs"), search=evaluate.SearchEval(folds=2, candidates=50, min_log_queries=4))
    result = json.loads((Path(evaluate.run(cfg)) / "metrics.json").read_text())
    assert "recommend" not in result and result["status"] == "complete"
    srch = result["search"]
    assert srch["queries"] == len(QUERIES) and srch["judgments_from"].startswith("the log's searches")
    bm25 = next(m for m in srch["full_catalog"] if m["method"] == "BM25F (fields, stemming, typos)")
    # the clicked items are title matches, so lexical search finds them (a broad query such as
    # "christmas" matches dozens of titles, of which three are judged)
    assert bm25["ndcg@10"] > 0.2
    few = replace(cfg, search=replace(cfg.search, min_log_queries=len(QUERIES) + 1))
    result = json.loads((Path(evaluate.run(few)) / "metrics.json").read_text())
    assert "search" not in result and result["status"] == "complete"
    assert f"the log has {len(QUERIES)} searches followed by a click" in result["search_skipped"]


def test_a_short_sparse_log_is_evaluated_with_what_it_can_train(ray_local, slice_, tmp_path):
    """The defaults on a few days of 6 shoppers: the last:30d split fits the log, and the encoder
    fine-tune and the learned ranker, with too little to train on, are left out with their reasons
    instead of failing the run."""
    base, end = slice_
    ev = pl.read_parquet(base / "events.parquet").filter(pl.col(S.TS) > end - dt.timedelta(days=12))
    ev = ev.join(ev.select(S.USER_ID).unique().sort(S.USER_ID).head(6), on=S.USER_ID)
    ev.write_parquet(tmp_path / "events.parquet")
    cfg = evaluate.EvaluateConfig(
        events=str(tmp_path / "events.parquet"), items=str(base / "items.parquet"), ks=(5, 10),
        output_root=str(tmp_path / "runs"), search=evaluate.SearchEval(from_log=False),
        encoder=evaluate.EncoderStage(max_time_s=10),
        sasrec=evaluate.SQ.SequenceParams(text=False, events=False, dim=16, heads=2, layers=1, max_epochs=1),
        sequence=evaluate.SequenceStage(enabled=False), ranker=evaluate.RankerParams(num_rounds=5, min_data_in_leaf=2))
    result = json.loads((Path(evaluate.run(cfg)) / "metrics.json").read_text())
    rec = result["recommend"]
    assert rec["notes"]["split on a short log"].startswith("split: last:30d would leave less than half of this")
    assert rec["split_adapted"] and rec["split_at"] > ev[S.TS].min().isoformat()  # the cut actually used
    assert f"(last:30d at {rec['split_at']}, shortened to fit the log: see the notes)" in evaluate.summary(result)
    assert rec["notes"]["fine-tuned encoder"].startswith("not trained: only ")
    assert rec["notes"]["system encoder"] == "zero-shot"
    assert rec["notes"]["learned ranker"].startswith("not trained: no ranker requests")
    assert rec["methods"] and rec["ranker"]["path"] is None
    # A handful of requests is scored, and the verdict says it cannot tell the methods apart.
    assert rec["requests"] < evaluate.MIN_REQUESTS and rec["verdict"]["note"].startswith(f"only {rec['requests']} test")
    assert "too few to tell the methods apart" in evaluate.summary(result)
