"""Evaluate intently end to end against simple baselines on any canonical data set.

    python -m jobs.evaluate [--config jobs/configs/evaluate.yaml] [--set key=value ...]
    python -m jobs.evaluate --set split=leave-last
    python -m jobs.evaluate --set events=null --set items=<items.parquet> --set judgments=<judgments.parquet>
    python -m jobs.evaluate --set recommend=false --set events=<log with searches> --set items=<items.parquet>
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.evaluate ...

Recommendation (events + items): split the log (`time:<ISO>` or `leave-last`, see
features/evaluation/splits.py and methods.py), then train EVERY stage on the training part only, in the run folder:
the feature job (twice: once before the ranker's label window, once before the test requests),
the encoder fine-tune (Ray Train), the FAISS index (Ray Data), the learned ranker (Ray Train
LightGBM), SASRec; then rank the full catalog for every test request with every method:
global popularity, recent popularity, item-to-item co-occurrence (alone and blended with recent
popularity), EASE, ALS matrix factorisation, SASRec, the zero-shot encoder,
the fine-tuned encoder without the ranker, the full system with the hand-set weights and the full
system with the learned ranker. Metrics at each k: HitRate, Recall, NDCG, MRR, precision/F1,
coverage, diversity, novelty, and per-request latency.

Search relevance (items + a judgments file of query, item_id, grade; without a file, the log's own
searches followed by a click, cart or purchase, features/data/judgments.py): nDCG@k re-ranking each
query's judged items and retrieving from the whole catalog, for plain BM25, BM25F (fields, stems,
typos), the zero-shot encoder and their hybrid (RRF), against the system: the query tower's
adapter, the fitted fusion, the search ranking's fitted match weights, and the ranker with hand
weights and learned, each fitted by cross-validation over queries (a query's judgments never fit
what is scored on it) and used only where it beats its default on validation queries (paired
interval above 0; that validation is a k-fold cross-validation inside the fold's training queries,
so every one of them counts, not a few dozen). Per-query nDCG is
written to runs/<version>/per_query/search.parquet; every method gets a 95% bootstrap interval.

Writes runs/<version>/metrics.json and report.html (plots), plus the stages' artifacts.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import ray

from features import artifacts as A
from features import metrics as M
from features.config import ConfigError, to_dict
from features.data import ease as E
from features.data import schema as S
from features.data.judgments import judgments_from_events, read_judgments
from features.data.pipeline import SplitConfig
from features.data.text import item_text_expr
from features.data.transforms import FeatureParams
from features.evaluation import baselines as B
from features.evaluation import methods as EM
from features.evaluation import point_in_time as PIT
from features.evaluation import report as R
from features.evaluation import search as SE
from features.evaluation import splits as ES
from features.models import onnx_encoder as OX
from features.models import query_adapter as QA
from features.models import sequence as SQ
from features.models.encoder import ZERO_SHOT, EncoderConfig
from features.models.learned_ranker import (
    SEGMENTS,
    LearnedRanker,
    RankerParams,
    WithFallback,
    importances,
    served_segments,
    shoppers,
    train_booster,
)
from features.profiles.profile import ProfileParams
from features.retrieval.catalog import Catalog, load_catalog
from features.retrieval.fusion import FusionParams, fuse
from features.retrieval.index import ItemIndex
from features.retrieval.lexical import BM25
from features.retrieval.live import LiveCatalog, RetrievalConfig
from features.retrieval.ranking import HandWeights, rank_candidates
from jobs.common import (
    RayConfig,
    Steps,
    cluster_gpus,
    fine_tune_plan,
    init_ray,
    load_job_config,
    one_blas_thread,
    parse_args,
    run_job,
)

POP_HALF_LIFE_DAYS = 7.0


@dataclass(frozen=True)
class EncoderStage:
    # true: fine-tune on CPUs too (the published runs); auto: only on the cluster's GPUs, which is
    # what the pipeline ships on a CPU-only cluster; false: no fine-tuned methods (their rows say why)
    fine_tune: bool | Literal["auto"] = True
    max_time_s: float = 240.0  # the fine-tune's time budget
    max_steps: int = 300
    num_workers: int = 2
    model: EncoderConfig = field(default_factory=lambda: EncoderConfig(max_length=32, batch_size=128))
    index_max_length: int = 64  # the index job's zero-shot max_length (as `make index`)
    query_precision: str = "int8-block"  # fp32 | int8-block | int8: the search queries' ONNX query tower (as serving's encoder.query_precision)


@dataclass(frozen=True)
class SequenceStage:
    enabled: bool = True  # false: no behaviour model (no sequence method, no sequence features)
    model: SQ.SequenceParams = field(default_factory=SQ.SequenceParams)
    num_workers: int = 1  # Ray Train workers (the job's cpus_per_worker = ray.num_cpus / num_workers)
    trainer: Literal["ray", "local"] = "ray"  # local: the same loop in this process (dev runs, tests)


@dataclass(frozen=True)
class SearchEval:
    folds: int = 5  # cross-validation by query for the learned search ranker
    candidates: int = 200  # retrieval candidates handed to the ranker (full-catalog setting)
    # Unjudged retrieval candidates are unknown, not irrelevant: on sparse judgments the best matches
    # are often unjudged, and labelling them 0 teaches the ranker that good matches are bad. Only
    # when the judgments are exhaustive ("irrelevant") are the top ones added to training lists as 0.
    unjudged: Literal["unknown", "irrelevant"] = "unknown"
    unjudged_negatives: int = 20  # with unjudged=irrelevant: per training query, that many top candidates
    query_adapter: bool = True  # train the query tower's adapter per fold (used where it wins on validation)
    # The adapter's epoch count and verdict, and the fusion's verdict: k-fold CV inside each fold's fitting queries.
    choice_folds: int = 5
    adapter: QA.AdapterParams = field(default_factory=QA.AdapterParams)
    max_queries: int = 0  # 0: every judged query; else a seeded sample of that many (development runs)
    # Without a judgments file, judge search by the log: a search followed within window_s by a click,
    # cart or purchase (features/data/judgments.py), when at least min_log_queries queries have one.
    from_log: bool = True
    window_s: float = 1800.0
    min_log_queries: int = 50


@dataclass(frozen=True)
class EvaluateConfig:
    events: str | None = "data/canonical/online_retail/events.parquet"  # null: search relevance only
    items: str = "data/canonical/online_retail/items.parquet"
    judgments: str | None = None  # Parquet or CSV with query, item_id, grade: search relevance
    recommend: bool = True  # false: only search relevance (from the judgments file or the log's searches)
    dataset: str | None = None  # a name for the report; default: the events (or items) folder name
    split: str = "last:30d"  # last:<days>d (a time split that many days before the last interaction) | time:<ISO instant> | leave-last
    ranker_days: float = 30.0  # time split: the ranker's label window before the split instant
    ranker_requests_per_user: int = 3  # time split: each user's first interactions in that window
    ranker_for_guests: bool = False  # the learned ranker may rank guests (train_ranker's learned_for_guests)
    ks: tuple[int, ...] = (10, 20, 50)
    exclude_purchased: bool = True
    reveal: float = 0.5  # in-session requests: the share of the basket already in the session
    max_requests: int = 0  # 0: every test request; else a seeded sample
    output_root: str = "runs"  # writes runs/<version>/
    encoder: EncoderStage = field(default_factory=EncoderStage)
    ranker: RankerParams = field(default_factory=RankerParams)
    sasrec: SQ.SequenceParams = field(default_factory=SQ.sasrec_params)  # the ID-only baseline
    sequence: SequenceStage = field(default_factory=SequenceStage)
    # A quick development run, labelled as such everywhere: 1,000 sampled requests per set (and
    # 1,000 judged queries for search), no encoder fine-tune, at most 3 epochs for the sequence
    # models. Never for reported numbers.
    dev: bool = False
    search: SearchEval = field(default_factory=SearchEval)
    profiles: ProfileParams = field(default_factory=ProfileParams)
    retriever: RetrievalConfig = field(default_factory=RetrievalConfig)
    hand_weights: HandWeights = field(default_factory=HandWeights)
    seed: int = 0
    ray: RayConfig = field(default_factory=RayConfig)


def check_config(cfg: EvaluateConfig) -> None:
    if cfg.events is None and cfg.judgments is None:
        raise ConfigError("events and judgments are both null: give events (recommendation) and/or judgments (search)")
    if not cfg.recommend and cfg.judgments is None and not cfg.search.from_log:
        raise ConfigError("recommend is false and there is no search to evaluate: give judgments, or set search.from_log=true")
    if cfg.judgments is None and cfg.search.from_log and cfg.search.min_log_queries < 2 * cfg.search.folds:
        raise ConfigError(f"search.min_log_queries must be >= 2 x search.folds ({2 * cfg.search.folds}), "
                          f"got {cfg.search.min_log_queries}")
    if cfg.search.window_s <= 0:
        raise ConfigError(f"search.window_s must be > 0 seconds, got {cfg.search.window_s}")
    if not cfg.ks or min(cfg.ks) < 1:
        raise ConfigError(f"ks must be positive integers, got {list(cfg.ks)}")
    if cfg.events is not None:
        ES.SplitSpec.parse(cfg.split)  # names the allowed values
    if cfg.search.choice_folds < 2:
        raise ConfigError(f"search.choice_folds must be >= 2, got {cfg.search.choice_folds}")
    if cfg.search.max_queries < 0:
        raise ConfigError(f"search.max_queries must be >= 0 (0: every judged query), got {cfg.search.max_queries}")
    try:
        OX.check_precision(cfg.encoder.query_precision, field="encoder.query_precision")
    except ValueError as e:
        raise ConfigError(str(e)) from None


# --- stages (each one the project's own job, run into the run folder) ---------------------------
def _write_events(df: pl.DataFrame, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(df.select(S.EVENTS_SCHEMA.names).to_arrow().cast(S.EVENTS_SCHEMA), path)
    return str(path)


def _features(cfg: EvaluateConfig, events_path: str, root: Path, until: dt.datetime) -> str:
    from jobs import build_features as BF

    fcfg = BF.BuildFeaturesConfig(
        events=events_path, items=cfg.items, output_root=str(root), ray=cfg.ray,
        split=SplitConfig(valid_start=(until - dt.timedelta(days=30)).isoformat(), test_start=until.isoformat()))
    m = BF.run(fcfg)
    print(BF.summary(m), flush=True)
    return m["path"]


def _encoder(cfg: EvaluateConfig, features_dir: str, root: Path, gpu_workers: int = 0) -> str:
    from features.models.training import TrainParams
    from jobs import train_encoder as TE

    e = cfg.encoder
    tcfg = TE.TrainEncoderConfig(features=features_dir, output_root=str(root), test_examples=-1, encoder=e.model,
                                 train=replace(TrainParams(), max_time_s=e.max_time_s, max_steps=e.max_steps,
                                               num_workers=gpu_workers or e.num_workers, use_gpu=gpu_workers > 0),
                                 ray=cfg.ray)
    TE.run(tcfg)
    return str(Path(A.latest_complete(str(root), "encoder")) / "model")


def _index(cfg: EvaluateConfig, features_dir: str, root: Path, encoder: str) -> str:
    from jobs import build_index as BI

    before = A.latest_complete(str(root), "index")
    BI.run(BI.BuildIndexConfig(features=features_dir, output_root=str(root), encoder=encoder, probes=0,
                               zero_shot=replace(EncoderConfig(), max_length=cfg.encoder.index_max_length), ray=cfg.ray))
    after = A.latest_complete(str(root), "index")
    if after is None or after == before:
        raise RuntimeError("the index job wrote no new version")
    return after


# --- recommendation -----------------------------------------------------------------------------
def evaluate_recommend(cfg: EvaluateConfig, run_dir: Path, steps: Steps, partial=lambda **kv: None,
                       inputs: tuple | None = None) -> dict:
    """Every stage on the training part, every method on the test requests; `partial(**results)`
    is called as parts finish (the driver writes them at once, so a late failure loses nothing)."""
    from jobs import train_ranker as TRK

    ks, L = tuple(sorted(cfg.ks)), max(cfg.ks)
    steps("plan the split" if inputs else "read + validate events and items; plan the split")
    events, items, counts = inputs or ES.read_inputs(cfg.events, cfg.items)
    plan = ES.plan_split(events, ES.SplitSpec.parse(cfg.split), cfg.ranker_days, cfg.ranker_requests_per_user)
    spec = plan.spec  # last:<days>d resolved to its time split
    for note in plan.notes:
        print(f"  NOTE {note}", flush=True)
    print(f"  {counts}; train events {plan.train_events.height:,} (until {plan.train_until.isoformat()}), "
          f"ranker-stage events {plan.ranker_events.height:,} (until {plan.ranker_until.isoformat()}), "
          f"test requests {plan.test_requests.height:,}, ranker requests {plan.ranker_requests.height:,}", flush=True)
    art = run_dir / "artifacts"
    a_events = _write_events(plan.ranker_events, run_dir / "data" / "ranker_stage" / "events.parquet")
    b_events = _write_events(plan.train_events, run_dir / "data" / "train" / "events.parquet")

    steps("feature job on the ranker stage's events (before the ranker's label window)")
    fa = _features(cfg, a_events, art / "ranker_stage", plan.ranker_until)
    steps("feature job on the training events (before the test requests)")
    fb = _features(cfg, b_events, art, plan.train_until)
    partial(stages={"features_ranker_stage": fa, "features": fb})

    notes: dict[str, str] = {"split on a short log": "; ".join(plan.notes)} if plan.notes else {}
    steps("zero-shot index (Ray Data)")
    zs_index = _index(cfg, fb, art, ZERO_SHOT)
    partial(stages={"index_zero_shot": zs_index})
    ft_index = None
    tune, gpu_workers, why = fine_tune_plan(cfg.encoder.fine_tune, cluster_gpus())
    if tune:
        steps(f"fine-tune the encoder on the ranker stage's examples (Ray Train, {cfg.encoder.max_time_s:.0f}s budget)"
              + (f", {why}" if why else ""))
        from jobs.train_encoder import TooFewExamples

        try:
            enc = _encoder(cfg, fa, art, gpu_workers)
        except TooFewExamples as e:  # a short or sparse log: the fine-tuned methods are left out, said why
            print(f"  NOTE no fine-tune: {e}; the system uses the zero-shot encoder", flush=True)
            notes["fine-tuned encoder"] = f"not trained: {e}"
            enc = None
        versus = None
        beats = False
        if enc is not None:
            steps("fine-tuned index (Ray Data)")
            ft_index = _index(cfg, fb, art, enc)
            partial(stages={"encoder": enc, "index_fine_tuned": ft_index})
            enc_metrics = A.read_manifest(str(Path(enc).parent)).get("metrics", {})
            beats, versus = enc_metrics.get("beats_zero_shot_on_valid"), enc_metrics.get("valid_vs_zero_shot")
            note_time_cap(notes, "encoder fine-tune", enc_metrics, cfg.encoder.max_time_s, "encoder.max_time_s")
        if versus:
            lo, hi = versus["paired_difference_ci95"]
            notes["encoder fine-tune vs zero-shot on valid"] = (
                f"NDCG@10 {versus['fine_tuned']:.4f} vs {versus['zero_shot']:.4f} over {versus['examples']:,} valid "
                f"examples, paired {versus['paired_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    else:
        notes["fine-tuned encoder"] = why.replace("fine_tune=", "encoder.fine_tune=") or "encoder.fine_tune=false"
        beats = False
    # Model selection on the validation split, never on the test: the system retrieves with the
    # fine-tuned encoder only when the fine-tune beat the zero-shot model on its valid split (the
    # paired 95% interval above 0).
    sys_index = ft_index if beats else zs_index
    notes["system encoder"] = ("fine-tuned (it beat zero-shot on the valid split, paired interval above 0)" if beats else
                               "zero-shot (the fine-tune did not beat it on the valid split)" if ft_index else "zero-shot")

    seq_a = seq_b = None
    if cfg.sequence.enabled:
        steps("behaviour model on the ranker stage's events (Ray Train; for the ranker's features)")
        seq_a = _sequence(cfg, a_events, art / "ranker_stage", sys_index)
        partial(stages={"sequence_ranker_stage": seq_a})
    else:
        notes["sequence model"] = "sequence.enabled=false"
    steps("learned ranker: candidate lists of the ranker requests, LightGBM on Ray Train")
    rcfg = TRK.TrainRankerConfig(events=cfg.events, items=cfg.items, output_root=str(art), features=fa, index=sys_index,
                                 sequence=seq_a, exclude_purchased=cfg.exclude_purchased, lightgbm=cfg.ranker,
                                 profiles=cfg.profiles, retriever=replace(cfg.retriever, lexical=False),
                                 hand_weights=cfg.hand_weights, seed=cfg.seed, ray=cfg.ray,
                                 learned_for_guests=cfg.ranker_for_guests)
    ranker_dir, ranker_manifest, untrained = None, {}, None
    try:
        x, y, g, stats = TRK.build_training_data(rcfg, fa, sys_index, events,
                                                 requests=ES.with_in_session(plan.ranker_requests, cfg.reveal),
                                                 point_in_time=plan.ranker_events if uses_point_in_time(plan) else None)
        ranker_dir = TRK.train(rcfg, x, y, g, stats, inputs={"features": fa, "index": sys_index, "sequence": seq_a})
        ranker_manifest = A.read_manifest(ranker_dir)
        partial(stages={"ranker": ranker_dir})
    except TRK.TooFewRequests as e:  # a short or sparse log: the hand-set weights rank, said why
        print(f"  NOTE no learned ranker: {e}; the system ranks with the hand-set weights", flush=True)
        untrained = str(e)
    # As serving does: the learned ranker ranks only the shoppers (with a history, guests) on whose
    # valid lists it beat the hand-set weights (paired interval); the others get the hand weights.
    segments = served_segments(ranker_manifest.get("metrics", {})) if ranker_dir else ()
    system_scorer = WithFallback(LearnedRanker.load(ranker_dir) if segments else None, cfg.hand_weights, segments)
    if untrained:
        notes["learned ranker"] = (f"not trained: {untrained}; the 'system, learned ranker' rows use the hand-set "
                                   "weights, as serving would")
    elif segments != SEGMENTS:
        notes["learned ranker"] = (
            (f"used for {shoppers(segments)}: it did not beat the hand-set weights on the other valid lists" if segments
             else "not used: it did not beat the hand-set weights on its valid lists")
            + " (paired interval), so the 'system, learned ranker' rows use the hand-set weights there, as serving would")
    if cfg.sequence.enabled:
        steps("behaviour model on the training events (Ray Train; for the test requests)")
        seq_b = _sequence(cfg, b_events, art, sys_index)
        partial(stages={"sequence": seq_b})

    steps("SASRec (ID only) until its validation NDCG@10 stops improving")
    cat_zs, _ = load_catalog(fb, zs_index)
    sasrec, sas_info = _sasrec(cfg, plan.train_events, cat_zs)
    note_time_cap(notes, "SASRec", sas_info, cfg.sasrec.max_time_s, "sasrec.max_time_s")
    steps("EASE baseline: dense weights on the training events, lambda as the feature job chose it")
    ease_model = _ease(plan.train_events, fb)
    steps("validation choices on the ranker requests (before the test period): fallback popularity, blend weight, "
          "ALS factors and regularization")
    choices = _choose_on_validation(cfg, plan, events, fa, zs_index, L)
    print(f"  {choices['summary']}", flush=True)
    partial(choices=choices)
    steps("ALS baseline: the validated factors and regularization on the training events")
    als = (B.fit_als(E.user_item_pairs(plan.train_events), *choices["als"], cfg.seed, cfg.ray.num_cpus)
           if choices.get("als") else None)
    notes.update(missing_baselines(ease_model, als, choices.get("als")))
    ctx = _Stages(cfg, plan, events, fb, zs_index, ft_index, sys_index, system_scorer, sasrec, seq_b, choices, L,
                  ease_model, als)
    sets = {}
    for name, frame in (("next_basket", plan.test_requests), ("in_session", ES.in_session(plan.test_requests, cfg.reveal))):
        steps(f"test set {name}: requests, replayed profiles, every method")
        with one_blas_thread():  # the ms columns: one request at a time, as in a serving replica
            sets[name] = _score_set(ctx, frame, ks, run_dir / "per_request" / f"{name}.parquet")
        partial(**{name: sets[name]})
    main = sets["next_basket"]
    seq_manifest = A.read_manifest(seq_b).get("metrics", {}) if seq_b else {}
    note_time_cap(notes, "behaviour model", seq_manifest, cfg.sequence.model.max_time_s, "sequence.model.max_time_s")
    return {
        "dataset": cfg.dataset or Path(cfg.events).parent.name, "split": cfg.split,
        "split_at": plan.train_until.isoformat() if spec.kind in ("time", "last") else None, "ks": list(ks),
        "split_adapted": any(n.startswith("split:") for n in plan.notes),
        "catalog_items": len(cat_zs), "counts": counts,
        "requests": main.get("requests", 0), "dropped": main.get("dropped", 0), "methods": main.get("methods", []),
        "verdict": main.get("verdict"), "skipped": main.get("skipped"),
        "protocol": PROTOCOL[spec.kind], "dev_mode": _dev_label(cfg),
        "in_session": sets["in_session"], "notes": notes, "validation_choices": choices,
        "ranker": {"path": ranker_dir, **ranker_manifest.get("metrics", {}),
                   "importances": ranker_manifest["outputs"]["importances"]["recommend"] if ranker_dir else {}},
        "sasrec": sas_info,
        "sequence": {k: seq_manifest.get(k) for k in ("epochs", "best_epoch", "stopped_by", "valid_ndcg@10", "train_s",
                                                      "fit_s", "windows", "curve")} | {"path": seq_b},
        "stages": {"features_ranker_stage": fa, "features": fb, "index_zero_shot": zs_index,
                   "index_fine_tuned": ft_index, "sequence_ranker_stage": seq_a, "sequence": seq_b},
    }


def missing_baselines(ease_model: object, als: object, als_choice: list | None) -> dict[str, str]:
    """Notes for EASE and ALS when they have no row: each needs 2 items with a positive event (ALS
    in the validation period too, where its settings are chosen), and a table without a baseline
    and without a word on why would read as if it had lost nothing."""
    notes = {}
    if ease_model is None:
        notes["EASE"] = "not run: fewer than 2 items with a positive event in the training events"
    if als is None:
        notes["ALS"] = ("not run: fewer than 2 items with a positive event in the "
                        + ("training events" if als_choice else "validation period, where its settings are chosen"))
    return notes


def note_time_cap(notes: dict, who: str, info: dict, cap_s: float, key: str) -> None:
    """A model that its time cap stopped, not its patience, is short of convergence (a sequence model
    on a large catalog, the encoder fine-tune on 2 CPUs), and a rerun may stop it elsewhere: the
    report and the log say so, with the setting that lifts the cap."""
    if info.get("stopped_by") == "max_time_s":
        done = (f"{info.get('epochs')} epochs (best {info.get('best_epoch')})" if "epochs" in info else
                f"{info.get('steps')} of {info.get('max_steps')} steps (best {info.get('best_step')})")
        notes[f"{who} training"] = (f"stopped by its {cap_s:.0f} s cap after {done}, not by patience: it may be "
                                    f"short of convergence, and a rerun may stop at another point; raise {key}")
        print(f"  NOTE {who}: {notes[f'{who} training']}", flush=True)


def _sequence(cfg: EvaluateConfig, events_path: str, root: Path, index_dir: str) -> str:
    from jobs import train_sequence as TS

    sq = cfg.sequence
    return TS.run(TS.TrainSequenceConfig(
        events=events_path, index=index_dir, exclude_history=cfg.exclude_purchased, output_root=str(root),
        model=sq.model, num_workers=sq.num_workers, cpus_per_worker=max(1, cfg.ray.num_cpus // sq.num_workers),
        trainer=sq.trainer, ray=cfg.ray))


def _ease(train_events: pl.DataFrame, features_dir: str) -> E.EaseModel | None:
    """The EASE baseline: the feature job's fit with its dense weights (the system reads only each
    item's top neighbours), at the lambda the feature job chose on its holdout."""
    lam = A.read_manifest(features_dir).get("metrics", {}).get("ease", {}).get("lambda")
    return E.fit(E.user_item_pairs(train_events), FeatureParams(ease_lambda=lam) if lam else FeatureParams())


def _sasrec(cfg: EvaluateConfig, train_events: pl.DataFrame, catalog: Catalog) -> tuple[SQ.SequenceScorer, dict]:
    """The ID-only SASRec baseline: the behaviour model's code without text and event/time inputs,
    the same validation split and patience (in process: a baseline, not a served model)."""
    import torch

    p = cfg.sasrec
    torch.manual_seed(p.seed)
    torch.set_num_threads(max(1, cfg.ray.num_cpus))
    seqs = SQ.sequences(train_events, catalog.row)
    train, hist, targets = SQ.split_valid(seqs, p, cfg.exclude_purchased)
    model = SQ.SequenceModel(len(catalog), catalog.dim, p)
    st = SQ.fit(model, train, hist, targets, cfg.exclude_purchased)
    info = {"epochs": st["epoch"], "best_epoch": st["best_epoch"], "stopped_by": st["stopped_by"],
            "valid_ndcg@10": round(st["best"], 6), "train_s": round(st["train_s"], 1), "windows": st["windows"],
            "curve": st["curve"]}
    return SQ.SequenceScorer(model, catalog.item_ids, catalog.item_ids, catalog.vectors), info


def uses_point_in_time(plan: ES.SplitPlan) -> bool:
    """Under leave-last the training part runs past most requests (other shoppers' later events):
    popularity is then rebuilt for each request from the training events before it, for the
    system and the baselines alike (features/evaluation/point_in_time.py), with the requests in
    time order. Under a time split every request comes after all training events: one features
    version serves them all, as it would in serving."""
    return plan.spec.kind == "leave-last"


def _in_time_order(plan: ES.SplitPlan, requests: pl.DataFrame) -> pl.DataFrame:
    return requests.sort([S.TS, S.USER_ID]) if uses_point_in_time(plan) else requests


def _popularity(plan: ES.SplitPlan, events: pl.DataFrame, until: dt.datetime, item_ids: list[str],
                reqs: ES.Requests) -> tuple[EM.PerRequest, EM.PerRequest]:
    """(all-time, recent) popularity of the baselines: of the whole training part (time split), or
    of each request's own time (leave-last, see `uses_point_in_time`)."""
    if uses_point_in_time(plan):
        return PIT.baseline_popularity(events, item_ids, reqs.ts, POP_HALF_LIFE_DAYS)
    return (B.popularity_scores(events, item_ids),
            B.popularity_scores(events, item_ids, as_of=until, half_life_days=POP_HALF_LIFE_DAYS))


BLEND_WEIGHTS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
VALID_REQUESTS = 2000
# Fewer test requests than this cannot tell methods apart (an NDCG difference of a few points needs
# hundreds of paired requests): the run still scores them, and its verdict and report say so.
MIN_REQUESTS = 100
FEW_REQUESTS = ("only {n} test requests: too few to tell the methods apart; lengthen the test window "
                "(--set split=last:90d), use --set split=leave-last, or evaluate on more data")


def _choose_on_validation(cfg: EvaluateConfig, plan: ES.SplitPlan, events: pl.DataFrame, fa: str, zs_index: str,
                          L: int) -> dict:
    """Choices made on the ranker requests (the period before the test; for leave-last each
    shopper's second-to-last interaction), never on the test: which popularity variant every
    method falls back to, the weight of the co-occurrence + recent popularity blend, and the ALS
    baseline's (factors, regularization) from B.ALS_GRID. State as of the ranker stage (its
    features' co-occurrence, its events' popularity, ALS fitted on its events)."""
    cat, _ = load_catalog(fa, zs_index)
    reqs = ES.build_requests(events, _in_time_order(plan, plan.ranker_requests), cfg.exclude_purchased,
                             VALID_REQUESTS, cfg.seed)
    if not len(reqs):
        return {"fallback": "recent", "blend_weight": 1.0, "requests": 0, "als": list(B.ALS_DEFAULT),
                "summary": "no validation requests: recent popularity, blend weight 1 and ALS "
                           f"{B.ALS_DEFAULT[0]} factors, regularization {B.ALS_DEFAULT[1]:g} by default"}
    reqs.profiles = ES.attach_profiles(reqs, events, cat, cfg.profiles)
    relevant = [{cat.row.get(i, -2 - j) for j, i in enumerate(rel)} for rel in reqs.relevant]
    pops = dict(zip(("all-time", "recent"), _popularity(plan, plan.ranker_events, plan.ranker_until, cat.item_ids, reqs)))

    def ndcg(res: EM.MethodResult) -> float:
        return M.list_metrics(res.lists, relevant, (10,))["ndcg@10"]

    pop_scores = {k: ndcg(EM.popularity_method(k, v, reqs, cat, L)) for k, v in pops.items()}
    fallback = max(pop_scores, key=lambda k: pop_scores[k])
    blend = {w: ndcg(EM.blend_method("blend", reqs, cat, pops["recent"], w, L)) for w in BLEND_WEIGHTS}
    w = max(blend, key=lambda k: blend[k])
    pairs = E.user_item_pairs(plan.ranker_events)
    als = {}
    for f, r in B.ALS_GRID:
        model = B.fit_als(pairs, f, r, cfg.seed, cfg.ray.num_cpus)
        if model is None:
            break
        with one_blas_thread():
            als[(f, r)] = ndcg(EM.history_method("ALS", reqs, cat, model, pops[fallback], L, ""))
    best = max(als, key=lambda k: (round(als[k], 6), k)) if als else None
    return {"requests": len(reqs), "fallback": fallback, "popularity_valid_ndcg@10": pop_scores,
            "blend_weight": w, "blend_valid_ndcg@10": {str(k): round(v, 6) for k, v in blend.items()},
            "als": list(best) if best else None,
            "als_valid_ndcg@10": {f"{f} factors, regularization {r:g}": round(v, 6) for (f, r), v in als.items()},
            "summary": f"{len(reqs):,} validation requests: fallback {fallback} popularity "
                       f"({', '.join(f'{k} {v:.4f}' for k, v in pop_scores.items())}); blend weight {w:g} "
                       f"(NDCG@10 {blend[w]:.4f})" + (f"; ALS {best[0]} factors, regularization {best[1]:g} "
                                                     f"(NDCG@10 {als[best]:.4f})" if best else "")}


PROTOCOL = {
    "time": ("next basket: each user's first interaction after the split instant is a request, its items not bought "
             "before are relevant, every method excludes the user's earlier purchases; in session: the same baskets "
             "with their first half already in the session (context), the second half relevant"),
    "leave-last": ("next basket: each user's last interaction is a request (the one before it the ranker's); "
                   "relevant = its items not bought before; earlier purchases excluded; in session: the same baskets "
                   "with their first half in the session, the second half relevant; popularity (the system's features "
                   "and candidates, the baselines, every fallback) is of each request's own time, from the training "
                   "events before it"),
}
BASELINES = ("popularity", "recent popularity", "co-occurrence", "co-occurrence + recent popularity", "EASE", "ALS",
             "SASRec", "zero-shot encoder", "fine-tuned encoder")


@dataclass
class _Stages:
    cfg: EvaluateConfig
    plan: ES.SplitPlan
    events: pl.DataFrame
    features_dir: str
    zs_index: str
    ft_index: str | None
    sys_index: str
    scorer: WithFallback  # the system's: the learned ranker where it beat the hand weights on validation
    sasrec: SQ.SequenceScorer
    sequence: str | None
    choices: dict
    L: int
    ease: E.EaseModel | None = None
    als: B.AlsModel | None = None


def _score_set(st: _Stages, frame: pl.DataFrame, ks: tuple[int, ...], per_request_path: Path) -> dict:
    cfg, plan, L = st.cfg, st.plan, st.L
    reqs = ES.build_requests(st.events, _in_time_order(plan, frame), cfg.exclude_purchased, cfg.max_requests, cfg.seed)
    if not len(reqs):
        # A valid data set can have no such request (e.g. one item per interaction leaves no
        # in-session half): say so and go on, never fail the run.
        print(f"  skipped: no test request with a relevant item ({reqs.dropped:,} dropped)", flush=True)
        return {"skipped": "no test request with a relevant item (e.g. interactions of a single item leave no "
                           "in-session half to predict)", "requests": 0, "dropped": reqs.dropped}
    print(f"  {len(reqs):,} requests ({reqs.dropped:,} dropped without a relevant item)", flush=True)
    if len(reqs) < MIN_REQUESTS:
        print("  WARNING: " + FEW_REQUESTS.format(n=len(reqs)), flush=True)
    cat_zs, _ = load_catalog(st.features_dir, st.zs_index)
    share, n_users = EM.item_shares(plan.train_events, cat_zs)
    pop, recent = _popularity(plan, plan.train_events, plan.train_until, cat_zs.item_ids, reqs)
    fb = recent if st.choices["fallback"] == "recent" else pop  # the strongest on validation, for every method
    fb_note = f"{st.choices['fallback']} popularity (the stronger on validation) for shoppers without a history"
    results: list[EM.MethodResult] = [
        EM.popularity_method("popularity", pop, reqs, cat_zs, L),
        EM.popularity_method(f"recent popularity ({POP_HALF_LIFE_DAYS:g}d half-life)", recent, reqs, cat_zs, L),
    ]
    by_index = {st.zs_index: ES.attach_profiles(reqs, st.events, cat_zs, cfg.profiles)}  # profiles per item vectors
    reqs.profiles = by_index[st.zs_index]
    results.append(EM.cooccurrence_method(reqs, cat_zs, fb, L, note=fb_note))
    w = st.choices["blend_weight"]
    results.append(EM.blend_method("co-occurrence + recent popularity", reqs, cat_zs, recent, w, L,
                                   note=f"weight {w:g} on popularity, chosen on validation"))
    if st.ease is not None:
        results.append(EM.history_method("EASE (item-to-item regression)", reqs, cat_zs, st.ease, fb, L,
                                         "λ as the feature job chose it"))
    if st.als is not None:
        a = st.als.info
        results.append(EM.history_method("ALS (matrix factorisation)", reqs, cat_zs, st.als, fb, L,
                                         f"{a['factors']} factors, regularization {a['regularization']:g}, chosen on validation"))
    results.append(EM.sequence_method("SASRec (ID only)", reqs, cat_zs, st.sasrec, fb, L))
    results.append(EM.embedding_method("zero-shot encoder", reqs, cat_zs, cfg.profiles, fb, L))
    # Each index has its own row order: a method on another index's catalog gets the fallback in
    # that catalog's rows, and its lists come back as cat_zs rows, where every method is scored.
    if st.ft_index is not None:
        cat_ft, _ = load_catalog(st.features_dir, st.ft_index)
        reqs.profiles = by_index[st.ft_index] = ES.attach_profiles(reqs, st.events, cat_ft, cfg.profiles)
        results.append(EM.lists_in(EM.embedding_method("fine-tuned encoder (no ranker)", reqs, cat_ft, cfg.profiles,
                                                       EM.fallback_in(fb, cat_zs, cat_ft), L), cat_ft, cat_zs))
    cat, idx = load_catalog(st.features_dir, st.sys_index)
    reqs.profiles = by_index[st.sys_index]  # the system's index is one of the two above: replayed already
    if st.sequence is not None:
        from features.models.sequence_io import attach

        attach(cat, st.sequence)
        results.append(EM.lists_in(EM.sequence_method("sequence model (text + ID)", reqs, cat, cat.sequence,
                                                      EM.fallback_in(fb, cat_zs, cat), L), cat, cat_zs))
    live = LiveCatalog(cat, idx, None, replace(cfg.retriever, lexical=False))
    hand = cfg.hand_weights
    clock = PIT.catalog_clock(plan.train_events, cat) if uses_point_in_time(plan) else None
    # Both systems rank the same candidates of each request (one pass: they differ in the scorer only).
    systems = EM.system_methods([("system, hand-set weights", hand), ("system, learned ranker (full)", st.scorer)],
                                reqs, live, cfg.profiles, L, clock)
    results += [EM.lists_in(r, cat, cat_zs) for r in systems]
    methods = [EM.score_method(r, reqs, cat_zs, ks, share, n_users) for r in results]
    _write_per_request(per_request_path, reqs, results)
    key = "ndcg@10" if 10 in ks else f"ndcg@{ks[0]}"
    base_rows = [(m, r) for m, r in zip(methods, results) if m["method"].startswith(BASELINES)]
    best, best_res = max(base_rows, key=lambda mr: mr[0][key])
    full, hand_row = methods[-1], methods[-2]
    diff = results[-1].per_request[key] - best_res.per_request[key]
    lo, hi = M.bootstrap_ci(diff, seed=cfg.seed)
    verdict = {"metric": key, "full_system": full[key], "full_system_ci95": full["ci95"][key],
               "strongest_baseline": best["method"], "strongest_baseline_value": best[key],
               "strongest_baseline_ci95": best["ci95"][key],
               "paired_difference": round(float(diff.mean()), 6), "paired_difference_ci95": [round(lo, 6), round(hi, 6)],
               "ratio_to_strongest_baseline": round(full[key] / best[key], 4) if best[key] > 0 else None,
               "full_beats_strongest_baseline": lo > 0, "learned_vs_hand": [full[key], hand_row[key]],
               "learned_beats_hand": full[key] > hand_row[key],
               **({"note": FEW_REQUESTS.format(n=len(reqs))} if len(reqs) < MIN_REQUESTS else {})}
    seq = next((r for r in results if r.name.startswith("sequence model")), None)
    if seq is not None:
        d = seq.per_request[key] - results[[r.name for r in results].index("SASRec (ID only)")].per_request[key]
        verdict["sequence_vs_sasrec"] = {"paired_difference": round(float(d.mean()), 6),
                                         "paired_difference_ci95": [round(x, 6) for x in M.bootstrap_ci(d, seed=cfg.seed)]}
    sizes = np.array([len(r) for r in reqs.relevant])
    return {"requests": len(reqs), "dropped": reqs.dropped, "methods": methods, "verdict": verdict,
            "relevant_items": {"mean": round(float(sizes.mean()), 3), "single_item_share": round(float((sizes == 1).mean()), 4)}}


def _write_per_request(path: Path, reqs: ES.Requests, results: list[EM.MethodResult]) -> None:
    """Per-request metrics of every method (one row per request and method), for paired tests;
    has_history: the shopper's profile held interactions before the request (else a guest)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    warm = [p is not None and bool(p.recent_items) for p in reqs.profiles]
    frames = [pl.DataFrame({"method": [r.name] * len(reqs), S.USER_ID: reqs.users, S.TS: reqs.ts, "has_history": warm,
                            **{k: v for k, v in (r.per_request or {}).items()}}) for r in results]
    pl.concat(frames, how="diagonal").write_parquet(path)


def _dev_label(cfg: EvaluateConfig) -> str | None:
    if not cfg.max_requests:
        return None
    return (f"DEVELOPMENT RUN: a seeded sample of {cfg.max_requests:,} requests per set; not for reporting")


# --- search relevance ---------------------------------------------------------------------------
def _encode_items(items: pl.DataFrame, onnx_dir: Path, cfg: EvaluateConfig) -> np.ndarray:
    """Item vectors through the index job's Ray Data actor pool (same code and exported model, no
    features version)."""
    from jobs.build_index import EMB_COLUMN, ItemEncoder

    ds = ray.data.from_arrow(items.select(S.ITEM_ID, S.ITEM_TEXT).to_arrow()).repartition(4 * max(1, cfg.ray.num_cpus)).materialize()
    out = ds.map_batches(ItemEncoder, fn_constructor_kwargs=dict(
        spec=ZERO_SHOT, artifacts_root=cfg.output_root, zero_shot=EncoderConfig(), threads=1, use_gpu=False,
        onnx=ray.put(OX.folder_files(onnx_dir))), batch_size=256, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=max(1, cfg.ray.num_cpus)), num_cpus=1)
    tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    import pyarrow as pa

    table = pa.concat_tables(tables)
    order = {i: n for n, i in enumerate(table.column(S.ITEM_ID).to_pylist())}
    emb = np.stack(table.column(EMB_COLUMN).to_numpy(zero_copy_only=False)).astype(np.float32)
    return emb[[order[i] for i in items[S.ITEM_ID].to_list()]]


def inner_folds(qs: list[int], folds: int, seed: int) -> list[list[int]]:
    """`qs` split (seeded) into min(folds, len(qs)) held-out sets for an out-of-fold verdict; none
    with fewer than 2 queries (the learned ranker then falls back to the hand weights)."""
    k = min(folds, len(qs))
    if k < 2:
        return []
    order = np.asarray(qs)[np.random.default_rng(seed).permutation(len(qs))]
    return [order[i::k].tolist() for i in range(k)]


@ray.remote(num_cpus=1)
def _fit_fold(x, y, g, vx, vy, vg, params):
    booster, info = train_booster(x, y, g, params, valid=(vx, vy, vg))
    return booster.model_to_string(), info


def sample_queries(judg: pl.DataFrame, max_queries: int, seed: int) -> tuple[pl.DataFrame, str | None]:
    """The judgments of a seeded sample of `max_queries` queries (all of a query's judgments or
    none; 0 or more than there are: all), and the development label when it sampled."""
    queries = judg["query"].unique().sort()
    if not max_queries or len(queries) <= max_queries:
        return judg, None
    keep = queries.sample(max_queries, seed=seed)
    return judg.filter(pl.col("query").is_in(keep.implode())), (
        f"DEVELOPMENT RUN: a seeded sample of {max_queries:,} of {len(queries):,} judged queries; not for reporting")


def search_judgments(cfg: EvaluateConfig, events: pl.DataFrame | None = None) -> tuple[pl.DataFrame | None, str]:
    """The search part's judgments (query, item_id, grade) and where they come from: the judgments
    file; else, with events and `search.from_log`, the log's searches followed by a click (grade 2),
    an add to cart (3) or a purchase (4) within `search.window_s`. None, with the reason, when there
    is nothing to score: no file and no log, or a log with fewer than `search.min_log_queries`
    such queries (cross-validation by query needs some in every fold). `events`: the validated
    log when already read."""
    if cfg.judgments is not None:
        return read_judgments(cfg.judgments), f"the judgments file {cfg.judgments}"
    if cfg.events is None or not cfg.search.from_log:
        return None, "no judgments file (--set judgments=...) and search.from_log is false"
    if events is None:
        events = ES.read_inputs(cfg.events, cfg.items)[0]
    j = judgments_from_events(events, cfg.search.window_s)
    nq = j["query"].n_unique()
    source = (f"the log's searches: {j.height:,} (query, item) pairs over {nq:,} queries, each a search followed within "
              f"{cfg.search.window_s:g} s in its session by a click (grade 2), add to cart (3) or purchase (4); "
              "only positives are judged, so re-ranking judged items orders clicks, carts and purchases")
    if nq < cfg.search.min_log_queries:
        return None, (f"search not evaluated: the log has {nq:,} searches followed by a click, cart or purchase "
                      f"(search.min_log_queries={cfg.search.min_log_queries}); give a judgments file with "
                      "--set judgments=<query,item_id,grade>")
    return j.select("query", S.ITEM_ID, "grade"), source


def judged_catalog_items(judg: pl.DataFrame, items: pl.DataFrame) -> tuple[pl.DataFrame, str | None]:
    """The judgments of items the catalog has, and a note on those left out (an item no longer
    sold cannot be retrieved, so it is no part of any ranking); none left: an error naming an id
    from each side, before any item is encoded."""
    known = judg.filter(pl.col(S.ITEM_ID).is_in(items.get_column(S.ITEM_ID).implode()))
    if known.height == judg.height:
        return judg, None
    gone = judg.filter(~pl.col(S.ITEM_ID).is_in(items.get_column(S.ITEM_ID).implode()))
    example = f"e.g. judged item_id {gone[S.ITEM_ID][0]!r}, catalog item_id {items[S.ITEM_ID][0]!r}"
    if known.is_empty():
        raise ValueError(f"judgments: none of the {judg.height:,} rows names an item of the catalog ({example}): "
                         "are both files from the same shop and id scheme?")
    return known, (f"{gone.height:,} of {judg.height:,} judgment rows name items the catalog lacks and are left out "
                   f"({example})")


def uninformative_rerank(grades: list[np.ndarray]) -> str | None:
    """Why re-ranking the judged items cannot tell methods apart, or None: when every query's judged
    items share one grade (a log's clicks), every order of them is ideal and every method scores 1."""
    if all(len(np.unique(g)) <= 1 for g in grades):
        return ("re-ranking not judged: every query's judged items share one grade (judgments from a log "
                "hold positives only), so every method scores 1; read the full-catalog setting")
    return None


def _vectors_from_index(items: pl.DataFrame, index_dir: str | None) -> np.ndarray | None:
    """The items' zero-shot vectors read back from a zero-shot index of the same items (built by
    the recommend part of this run, same encoder and max_length), or None when it lacks any."""
    if index_dir is None:
        return None
    index = ItemIndex.load(index_dir)
    row = {i: r for r, i in enumerate(index.item_ids)}
    wanted = items[S.ITEM_ID].to_list()
    if any(i not in row for i in wanted):
        return None
    return index.vectors()[[row[i] for i in wanted]]


def evaluate_search(cfg: EvaluateConfig, steps: Steps, judg: pl.DataFrame, source: str, zero_shot_index: str | None = None,
                    per_query_path: Path | None = None) -> dict:
    """Search relevance on judgments `judg` (query, item_id, grade) that come from `source`."""
    import lightgbm as lgb

    ks = tuple(sorted(cfg.ks))
    key = "ndcg@10" if 10 in ks else f"ndcg@{ks[0]}"
    steps("read items")
    from features.data.validate import ValidationConfig, validate_items

    items, _ = validate_items(ES.read_table(cfg.items), ValidationConfig())
    items = items.with_columns(item_text_expr())
    judg, left_out = judged_catalog_items(judg, items)
    if left_out:
        print(f"  {left_out}", flush=True)
    judg, dev_mode = sample_queries(judg, cfg.search.max_queries, cfg.seed)
    if dev_mode:
        print(f"  {dev_mode}", flush=True)
    vecs = _vectors_from_index(items, zero_shot_index)
    # Queries and items through the same exported model: the zero-shot index's, else one exported here.
    onnx_dir, tmp = Path(zero_shot_index or ".", OX.FOLDER), None
    if vecs is None or not OX.is_onnx_folder(onnx_dir):
        tmp = tempfile.TemporaryDirectory(prefix="intently-onnx-")
        zs = replace(EncoderConfig(), max_length=cfg.encoder.index_max_length)
        onnx_dir, _ = OX.export_spec(ZERO_SHOT, cfg.output_root, zs, tmp.name)
    if vecs is None:
        steps(f"encode {items.height:,} items (Ray Data) and the queries, zero-shot (ONNX Runtime)")
        vecs = _encode_items(items, onnx_dir, cfg)
    else:
        steps(f"encode the queries, zero-shot ({items.height:,} item vectors from this run's zero-shot index)")
    catalog = Catalog(items[S.ITEM_ID].to_list(), vecs, items, {})
    J = EM.Judgments.from_frame(judg, catalog)
    q_emb = OX.OnnxEncoder(onnx_dir, max(1, cfg.ray.num_cpus), cfg.encoder.query_precision).encode(J.queries, tower="query")
    if tmp is not None:
        tmp.cleanup()
    steps("index the catalog: BM25F (fields, stems, typos) as serving, and a plain BM25 for the baseline")
    live = LiveCatalog(catalog, ItemIndex.build(catalog.item_ids, vecs), None,
                       replace(cfg.retriever, lexical=True, num_candidates=cfg.search.candidates))
    bm25 = live.bm25
    plain = BM25.build(catalog.text, cfg.retriever.bm25_k1, cfg.retriever.bm25_b, stemmer="none", typo_tolerance=False)
    hand = cfg.hand_weights
    nq = len(J.queries)
    folds = EM.query_folds(nq, cfg.search.folds, cfg.seed)
    gains_ideal = [M.grade_gain(J.grades[q]) for q in range(nq)]

    steps(f"learned search ranker and fusion: {cfg.search.folds}-fold cross-validation by query (Ray tasks)")
    feats = EM.judged_features_many(J, list(range(nq)), q_emb, catalog, bm25)
    # LightGBM's lambdarank takes integer labels (gain 2^label - 1, the gain nDCG uses here at integer
    # grades): averaged grades (1.67, 2.5, ...) are rounded for training only; every nDCG below uses
    # the real grades.
    labels = [np.rint(np.maximum(J.grades[q] - 1.0, 0.0)).astype(np.int32) for q in range(nq)]

    def ranker_list(q: int, qv: np.ndarray, judged_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Query q's training list for the learned ranker, with query vector `qv` (`judged_x`: its judged
        items' features with that vector): its judged items (and, where judgments are exhaustive, the
        top unjudged candidates as 0s), features, labels."""
        judged = set(J.items[q])
        extra: list[int] = []
        if cfg.search.unjudged == "irrelevant":  # exhaustive judgments: the top unjudged candidates are true 0s
            ids, _, _ = live.search(J.queries[q], qv)
            extra = [r for r in catalog.rows(ids) if int(r) not in judged][:cfg.search.unjudged_negatives]
        rows = np.concatenate([np.asarray(J.items[q], np.int64), np.asarray(extra, np.int64)])
        x = EM.query_features(J.queries[q], qv, rows, catalog, bm25) if extra else judged_x
        return x, np.concatenate([labels[q], np.zeros(len(extra), np.int32)])

    futures, fusions, fusion_reports, q_fold, adapters = [], [], [], [], []
    inner_futures, inner_sets, verdict_vecs = [], [], []  # the learned ranker's verdict, out of fold (below)
    hands, weight_reports, fold_seconds = [], [], []
    rng = np.random.default_rng(cfg.seed)

    for f in range(cfg.search.folds):
        t_fold = time.perf_counter()
        train_q = [q for q in range(nq) if folds[q] != f]
        valid_q = set(rng.choice(train_q, max(1, len(train_q) // 10), replace=False).tolist())
        fit_q = [q for q in train_q if q not in valid_q]
        # The query tower: an adapter over the fitting queries, its epoch count chosen by k-fold
        # cross-validation over them, used for this fold only where its out-of-fold scores beat the
        # zero-shot query vectors' (paired interval above 0, SE.beats). The validation queries stay
        # unseen for the ranker's choice below.
        q_fold.append(q_emb)
        adapters.append({"used": False})
        fit_vecs = {q: q_emb[q] for q in fit_q}
        took = {}  # seconds of each of the fold's steps, printed on its line
        t_step = time.perf_counter()
        if cfg.search.query_adapter:
            adapter, adapters[-1], fit_vecs = SE.fit_query_adapter(J, q_emb, vecs, fit_q, cfg.search.adapter,
                                                                   cfg.search.choice_folds, cfg.seed)
            if adapter is not None:
                q_fold[-1] = adapter.apply(q_emb)
        took["adapter"], t_step = time.perf_counter() - t_step, time.perf_counter()
        # The fusion of the two retrievers, fitted on this fold's fitting queries (their out-of-fold
        # adapted vectors where the adapter is used) and kept only where fitting beats the configured
        # fusion out of fold, as jobs.train_search decides for serving.
        p, fusion_report = SE.choose_fusion([SE.pool(live, J, q, v) for q, v in fit_vecs.items()],
                                            cfg.retriever.fusion_params(), cfg.search.choice_folds, cfg.seed)
        fusions.append(p)
        fusion_reports.append(fusion_report)
        took["fusion"], t_step = time.perf_counter() - t_step, time.perf_counter()
        # The search ranking's match weights, fitted on the same queries and vectors, ranked as serving
        # ranks with that fusion, and kept only where fitting beats the configured weights out of fold.
        hand_f, weight_report = SE.choose_search_weights(live, J, fit_vecs, hand, p, cfg.search.choice_folds, cfg.seed)
        hands.append(hand_f)
        weight_reports.append(weight_report)
        took["match weights"], t_step = time.perf_counter() - t_step, time.perf_counter()

        # The learned ranker's lists, with the query vectors it will meet: the fitting queries' out-of-
        # fold vectors where the adapter is used (its own vectors of its training queries are better
        # than on any new query; on a judgment set so large that only some inner folds were trained,
        # the rest keep the fold adapter's), the validation queries' from the fold's adapter, which
        # never saw them.
        list_vecs = np.stack([fit_vecs[q] if q in fit_vecs else q_fold[-1][q] for q in train_q])
        judged_x = [feats[q] for q in train_q] if q_fold[-1] is q_emb else EM.judged_features_many(
            J, train_q, list_vecs, catalog, bm25)
        lists = {q: ranker_list(q, v, x) for q, v, x in zip(train_q, list_vecs, judged_x)}

        def stack(qs):
            return (np.concatenate([lists[q][0] for q in qs]), np.concatenate([lists[q][1] for q in qs]),
                    np.concatenate([np.full(len(lists[q][1]), q) for q in qs]))
        futures.append(_fit_fold.remote(*stack(fit_q), *stack(sorted(valid_q)), cfg.ranker))
        # Whether to use the learned ranker is judged out of fold over ALL the fold's training queries
        # (k-fold inside them, each inner model early-stopped on a tenth of its own training queries),
        # as the adapter, the fusion and the match weights are: on the 10% validation queries alone
        # (about 20 here) a model retrained on features that moved by 1e-6 flipped a fold's verdict.
        verdict_vecs.append(dict(zip(train_q, list_vecs)))
        inner_sets.append(inner_folds(train_q, cfg.search.choice_folds, cfg.seed + f))
        for held in inner_sets[-1]:
            rest = sorted(set(train_q) - set(held))
            stop = set(rest[::10]) if len(rest) > 1 else set(rest)  # every tenth stops the inner model's boosting
            inner_futures.append(_fit_fold.remote(*stack([q for q in rest if q not in stop] or rest),
                                                  *stack(sorted(stop)), cfg.ranker))
        took["ranker lists"] = time.perf_counter() - t_step
        fold_seconds.append({k: round(v, 2) for k, v in took.items()})
        print(f"  fold {f + 1}/{cfg.search.folds}: {len(fit_q):,} fitting queries, query adapter "
              f"{'used' if adapters[-1]['used'] else 'not used'}, fusion {p.describe()}, "
              f"{SE.describe_weights(weight_report['fitted'] if weight_report['kept'] else {})} "
              f"({time.perf_counter() - t_fold:.0f} s: " + ", ".join(f"{k} {v:.0f}" for k, v in took.items()) + ")",
              flush=True)
    fold_models = [lgb.Booster(model_str=s) for s, _ in ray.get(futures)]
    inner_models = iter([lgb.Booster(model_str=s) for s, _ in ray.get(inner_futures)])

    # A fold's model is used only if learned ranking beats the hand weights out of fold over the
    # fold's training queries (never its test fold; inner models, paired interval above 0), ranking
    # retrieval candidates as serving does; otherwise the fold falls back to the hand weights.
    fold_report, fold_scorers = [], []
    for f, booster in enumerate(fold_models):
        learned, hand_v = [], []
        for held in inner_sets[f]:
            inner = WithFallback(LearnedRanker({"search": next(inner_models)}, {}), hands[f])
            both = SE.ranked_ndcg_per_query(live, J, {q: verdict_vecs[f][q] for q in held}, [inner, hands[f]], fusions[f])
            learned.append(both[:, 0])
            hand_v.append(both[:, 1])
        learned, hand_v = (np.concatenate(x) if x else np.zeros(0) for x in (learned, hand_v))
        won = SE.beats(learned, hand_v, cfg.seed) if len(learned) else {
            "beats": False, "paired_difference": 0.0, "paired_difference_ci95": [0.0, 0.0], "queries": 0}
        uses = "learned" if won["beats"] else "hand weights"
        fold_report.append({"fold": f, "query_adapter": adapters[f], "fusion": fusions[f].describe(),
                            "fusion_choice": fusion_reports[f], "seconds": fold_seconds[f],
                            "valid_queries": won["queries"], "valid_folds": len(inner_sets[f]),
                            "valid_ndcg@10_learned": round(SE.nanmean(learned), 6),
                            "valid_ndcg@10_hand_weights": round(SE.nanmean(hand_v), 6),
                            "search_weights": weight_reports[f], "valid_learned_vs_hand": won, "uses": uses})
        fold_scorers.append(WithFallback(LearnedRanker({"search": booster}, {}), hands[f]) if uses == "learned" else hands[f])
    print("  folds (valid nDCG@10, full catalog): " + "; ".join(
        f"{r['fold']}: query adapter {'used' if r['query_adapter']['used'] else 'not used'}, fusion {r['fusion']}, "
        f"{SE.describe_weights(r['search_weights']['fitted'] if r['search_weights']['kept'] else {})}, learned {r['valid_ndcg@10_learned']:.4f} vs hand "
        f"{r['valid_ndcg@10_hand_weights']:.4f} -> {r['uses']}" for r in fold_report), flush=True)

    steps("score every method: re-ranking the judged items, retrieving from the whole catalog")
    BASE = ("BM25 (plain: one text field, no stemming)", "BM25F (fields, stemming, typos)", "zero-shot encoder",
            "hybrid retrieval (RRF k=60)")
    SYS = ("system: dense retrieval, query tower (CV)", "system: retrieval, fusion fitted per fold",
           "system, hand weights (match weights fitted per fold)", "system, learned ranker (CV)")
    names = BASE + SYS
    rerank: dict[str, list[np.ndarray]] = {m: [] for m in names}
    full: dict[str, list[np.ndarray]] = {m: [] for m in names}
    lat: dict[str, list[float]] = {m: [] for m in names}
    K = max(ks)
    n_items = len(catalog)
    default_fusion = FusionParams()

    def timed(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        lat[name].append((time.perf_counter() - t0) * 1e3)
        return out

    t_score, every = time.perf_counter(), max(1, nq // 10)
    for q in range(nq):
        if q and q % every == 0 and nq >= 1000:
            print(f"  scored {q:,} of {nq:,} queries ({time.perf_counter() - t_score:.0f} s)", flush=True)
        rows = np.asarray(J.items[q])
        g = gains_ideal[q]
        qa = q_fold[folds[q]][q]  # the fold's query vector (adapted where its adapter won in CV)
        raw_plain = timed(BASE[0], lambda: plain.scores(J.queries[q], n_items))
        raw = timed(BASE[1], lambda: bm25.scores(J.queries[q], n_items))
        cos = timed(BASE[2], lambda: vecs @ q_emb[q])
        cos_a = timed(SYS[0], lambda: vecs @ qa)
        xa = feats[q] if q_fold[folds[q]] is q_emb else EM.query_features(J.queries[q], qa, rows, catalog, bm25, cos=cos_a)
        fz, scorer = fusions[folds[q]], fold_scorers[folds[q]]
        judged_scores = {
            BASE[0]: raw_plain[rows], BASE[1]: raw[rows], BASE[2]: cos[rows],
            BASE[3]: fuse(cos[rows], raw[rows], "rrf", default_fusion.rrf_k),
            SYS[0]: cos_a[rows], SYS[1]: fuse(cos_a[rows], raw[rows], fz.method, fz.rrf_k, fz.ann_weight),
            SYS[2]: hands[folds[q]].score(xa, "search"), SYS[3]: scorer.score(xa, "search"),
        }
        for m, sc in judged_scores.items():
            rerank[m].append(g[np.argsort(-sc, kind="stable")])
        for m, sc in ((BASE[0], raw_plain), (BASE[1], raw), (BASE[2], cos), (SYS[0], cos_a)):
            full[m].append(SE.ranked_gains(J, q, M.top_k(sc, K)))
        for m, fusion, qv in ((BASE[3], default_fusion, q_emb[q]), (SYS[1], fz, qa)):
            ids, _, _ = timed(m, lambda: live.search(J.queries[q], qv, fusion=fusion))
            full[m].append(SE.ranked_gains(J, q, catalog.rows(ids)[:K]))
        ctx = EM.search_context(J.queries[q], qa)
        for m, sc in ((SYS[2], hands[folds[q]]), (SYS[3], scorer)):
            def ranked():
                ids, _, cand_bm = live.search(J.queries[q], qa, fusion=fz)
                return rank_candidates(ctx, ids, catalog, sc, K, cand_bm, explain=False)
            full[m].append(SE.ranked_gains(J, q, [r.row for r in timed(m, ranked)]))
    out, verdicts, per_q = {}, {}, {}
    for setting, lists in (("rerank", rerank), ("full_catalog", full)):
        per_q[setting] = {m: SE.per_query_ndcg(v, gains_ideal, ks) for m, v in lists.items()}
        out[setting] = [SE.summarize(m, per_q[setting][m], cfg.seed) for m in names]
        verdicts[setting] = SE.verdict(out[setting], per_q[setting], SYS[3], SYS[2], list(BASE), key, cfg.seed)
        verdicts[setting]["vs_bm25f"] = SE.paired(per_q[setting][SYS[3]][key], per_q[setting][BASE[1]][key], cfg.seed)
        verdicts[setting]["query_tower_vs_bm25f"] = SE.paired(per_q[setting][SYS[0]][key], per_q[setting][BASE[1]][key], cfg.seed)
        verdicts[setting]["query_tower_vs_zero_shot"] = SE.paired(per_q[setting][SYS[0]][key], per_q[setting][BASE[2]][key], cfg.seed)
    rerank_note = uninformative_rerank([J.grades[q] for q in range(nq)])
    if rerank_note:
        verdicts.pop("rerank")
    for r in fold_report:  # the system against BM25F on each fold's test queries
        test_q = folds == r["fold"]
        for setting in ("full_catalog", "rerank"):
            sys_v, bm_v = per_q[setting][SYS[3]][key][test_q], per_q[setting][BASE[1]][key][test_q]
            r[f"test_{key}_{setting}"] = {"system": round(float(np.nanmean(sys_v)), 6),
                                         "BM25F": round(float(np.nanmean(bm_v)), 6)}
    if per_query_path is not None:
        per_query_path.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame([{"setting": s, "method": m, "query": J.queries[q], "fold": int(folds[q]),
                       **{k: float(v[k][q]) for k in v}} for s in per_q for m, v in per_q[s].items()
                      for q in range(nq)]).write_parquet(per_query_path)
    skipped = sum(1 for g in gains_ideal if g.max() <= 0)
    return {
        "dataset": cfg.dataset or Path(cfg.judgments or cfg.events or cfg.items).parent.name, "ks": list(ks), "queries": nq,
        "judgments_from": source, "judgments_left_out": left_out,
        "judgments": judg.height, "catalog_items": len(catalog), "queries_without_a_relevant_item": skipped,
        "dev_mode": dev_mode,
        "protocol": (f"gain 2^(grade-1)-1; rerank: each query's judged items ordered by the method; full catalog: the "
                     f"method's top {K} of all items, unjudged items gain 0; {cfg.search.folds}-fold CV by query: "
                     "each fold trains the learned ranker on its fitting queries (integer labels round(grade-1), unjudged candidates "
                     f"{'irrelevant' if cfg.search.unjudged == 'irrelevant' else 'left out (unknown)'}), using the model "
                     "only where it beats the hand weights on validation queries carved from its training folds "
                     "(full-catalog nDCG@10, ranked as serving ranks; 'beats': the paired 95% interval is above 0); "
                     "the query tower's adapter trained on the fitting queries, its epoch count chosen by "
                     f"{cfg.search.choice_folds}-fold CV over them (only as many folds trained as hold out "
                     f"{QA.MIN_HELD_OUT} queries) and used where its out-of-fold dense-retrieval nDCG@10 beats "
                     "zero-shot's in the same sense; the fusion of dense and lexical retrieval fitted on the fitting "
                     "queries (their out-of-fold adapted vectors where the adapter is used) and kept where fitting "
                     f"beats the configured fusion out of fold ({cfg.search.choice_folds}-fold CV, the same sense); "
                     "the search ranking's match weights (title_match, head_match, phrase_match) fitted and kept the same way; "
                     "95% intervals: bootstrap over queries; "
                     "encoder zero-shot (no fine-tune on this data); lexical analysis (fields and weights, Snowball "
                     "stemming, AUTO typo distance) set from published defaults, not tuned on this data"),
        "ranker_folds": fold_report,
        "rerank": out["rerank"], "rerank_note": rerank_note, "full_catalog": out["full_catalog"],
        "latency": {m: {"p50": EM.percentile(np.array(v), 50), "p95": EM.percentile(np.array(v), 95), "p99": EM.percentile(np.array(v), 99)}
                    for m, v in lat.items() if v},
        "ranker_fold0_importances": importances(fold_models[0]), "verdict": verdicts,
    }


# --- driver -------------------------------------------------------------------------------------
def dev_config(cfg: EvaluateConfig) -> EvaluateConfig:
    """The `dev: true` shortcuts (see EvaluateConfig.dev)."""
    if not cfg.dev:
        return cfg
    sq = cfg.sequence
    return replace(cfg, max_requests=cfg.max_requests or 1000, encoder=replace(cfg.encoder, fine_tune=False),
                   search=replace(cfg.search, max_queries=cfg.search.max_queries or 1000),
                   sasrec=replace(cfg.sasrec, max_epochs=min(cfg.sasrec.max_epochs, 3)),
                   sequence=replace(sq, trainer="local", model=replace(sq.model, max_epochs=min(sq.model.max_epochs, 3))))


def run(cfg: EvaluateConfig) -> str:
    check_config(cfg)
    cfg = dev_config(cfg)
    steps = Steps("evaluate")
    version = A.new_version()
    run_dir = Path(cfg.output_root, version)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.dev:
        print(f"evaluate: {_dev_label(cfg)}", flush=True)
    init_ray(cfg.ray)
    t0 = time.perf_counter()
    result: dict = {"run": version, "commit": A.git_commit(), "config": to_dict(cfg), "status": "running"}

    def save() -> None:  # after every finished part: a late failure never loses the run
        (run_dir / "metrics.json").write_text(json.dumps(result, indent=1, default=str))

    def partial(**kv) -> None:  # `stages` (each finished stage's output) grows; other keys are set
        done = result.setdefault("recommend_partial", {})
        done.setdefault("stages", {}).update(kv.pop("stages", {}))
        done.update(kv)
        save()

    save()  # from the start: a run stopped in any stage still says what it was and how far it got

    try:
        inputs = None  # the validated events and items, read once for both parts
        if cfg.events is not None and (cfg.recommend or (cfg.judgments is None and cfg.search.from_log)):
            steps("read + validate events and items")
            inputs = ES.read_inputs(cfg.events, cfg.items)
        if cfg.events is not None and cfg.recommend:
            result["recommend"] = evaluate_recommend(cfg, run_dir, steps, partial, inputs)
            result.pop("recommend_partial", None)
            result["ranker"] = {"importances": result["recommend"]["ranker"]["importances"]}
            save()
        if cfg.judgments is not None or cfg.search.from_log:
            steps("search judgments: " + ("the judgments file" if cfg.judgments else "the log's searches"))
            judg, source = search_judgments(cfg, inputs[0] if inputs else None)
            if judg is None:
                print(f"  {source}", flush=True)
                result["search_skipped"] = source
            else:
                print(f"  from {source}", flush=True)
                zs_index = result.get("recommend", {}).get("stages", {}).get("index_zero_shot")
                result["search"] = evaluate_search(cfg, steps, judg, source, zs_index, run_dir / "per_query" / "search.parquet")
    except BaseException as e:  # said in the run's file too, with what had finished (stages)
        result["status"] = (f"stopped in '{steps.current}'" if isinstance(e, (KeyboardInterrupt, SystemExit)) else
                            f"failed in '{steps.current}': {type(e).__name__}: {e}")
        save()
        raise
    result["status"] = "complete"
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["summary"] = _summary_line(result)
    steps(f"write {run_dir}/metrics.json and report.html")
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=1, default=str))
    (run_dir / "report.html").write_text(R.render(result))
    steps("done")
    print(summary(result), flush=True)
    print(f"report: {run_dir / 'report.html'}", flush=True)
    return str(run_dir)


def _summary_line(result: dict) -> str:
    parts = []
    if "recommend" in result:
        rec = result["recommend"]
        if rec.get("dev_mode"):
            parts.append(rec["dev_mode"])
        for name, block in (("next basket", rec), ("in session", rec["in_session"])):
            v = block.get("verdict")
            if not v:
                parts.append(f"recommend ({name}) skipped: {block.get('skipped')}")
                continue
            lo, hi = v["paired_difference_ci95"]
            parts.append(f"recommend ({name}) {v['metric']}: full system {v['full_system']:.4f} vs strongest baseline "
                         f"({v['strongest_baseline']}) {v['strongest_baseline_value']:.4f}, paired difference "
                         f"{v['paired_difference']:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}]"
                         f"{' (beats)' if v['full_beats_strongest_baseline'] else ' (does not beat)'}; learned vs hand "
                         f"{v['learned_vs_hand'][0]:.4f} vs {v['learned_vs_hand'][1]:.4f}"
                         + (f" ({v['note']})" if v.get("note") else ""))
    if result.get("search_skipped"):
        parts.append(result["search_skipped"])
    if "search" in result:
        if result["search"].get("dev_mode"):
            parts.append(result["search"]["dev_mode"])
        for setting, v in result["search"]["verdict"].items():
            lo, hi = v["paired_difference_ci95"]
            parts.append(f"search {setting} {v['metric']}: full system {v['full_system']:.4f} vs strongest baseline "
                         f"({v['strongest_baseline']}) {v['strongest_baseline_value']:.4f}, paired difference "
                         f"{v['paired_difference']:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}]"
                         f"{' (beats)' if v['full_beats_strongest_baseline'] else ' (does not beat)'}")
    return "; ".join(parts)


def summary(result: dict) -> str:
    lines = [f"evaluation {result['run']} ({result['seconds']}s)"]
    rec = result.get("recommend")
    if rec:
        ks = rec["ks"]
        at = f" at {rec['split_at']}" if rec.get("split_at") and not rec["split"].startswith("time:") else ""
        at += ", shortened to fit the log: see the notes" if rec.get("split_adapted") else ""
        lines.append(f"recommend on {rec['dataset']} ({rec['split']}{at}), {rec['catalog_items']:,} items")
        head = f"  {'method':<36}" + "".join(f"{'ndcg@' + str(k):>10}" for k in ks) + "".join(
            f"{'hit@' + str(k):>9}" for k in ks) + f"{'mrr':>8}{'cov@' + str(ks[0]):>9}{'p50 ms':>9}"
        lines.append(head)
        for title, block in (("next basket", rec), ("in session", rec["in_session"])):
            if block.get("skipped"):
                lines.append(f" {title}: skipped: {block['skipped']}")
                continue
            single = block.get("relevant_items", {}).get("single_item_share", 0.0)
            lines.append(f" {title}: {block['requests']:,} requests" + (
                f" ({single:.0%} with one relevant item: where a log writes each event at its own time, an interaction "
                "is one event, so a 'basket' is the next item)" if single >= 0.5 else ""))
            for m in block["methods"]:
                lines.append(f"  {m['method']:<36}" + "".join(f"{m[f'ndcg@{k}']:>10.4f}" for k in ks) + "".join(
                    f"{m[f'hit_rate@{k}']:>9.4f}" for k in ks) + f"{m['mrr']:>8.4f}{m[f'coverage@{ks[0]}']:>9.3f}"
                    f"{m['latency_ms']['p50']:>9.2f}")
    srch = result.get("search")
    if srch:
        for setting in ("rerank", "full_catalog"):
            lines.append(f"search on {srch['dataset']} ({setting}): {srch['queries']} queries"
                         + (f" ({srch['rerank_note']})" if setting == "rerank" and srch.get("rerank_note") else ""))
            for m in srch[setting]:
                lines.append(f"  {m['method']:<44}" + "".join(f"  ndcg@{k} {m[f'ndcg@{k}']:.4f}" for k in srch["ks"]))
    lines.append(result["summary"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[1].strip(), "evaluate.yaml", argv)

    def body() -> int:
        run(load_job_config(EvaluateConfig, args))
        return 0

    if threading.current_thread() is threading.main_thread():  # `kill` or `ray job stop`: the run's file says so
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run_job("evaluate", body)


if __name__ == "__main__":
    sys.exit(main())
