"""Fit the search side on the shop's own judgments: the query tower's adapter, the fusion of dense
and lexical retrieval, and the search ranking's match weights.

    python -m jobs.train_search [--config jobs/configs/train_search.yaml] [--set key=value ...]
    python -m jobs.train_search --set judgments=<query,item_id,grade file>
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.train_search ...

Judgments: a file of query, item_id, grade (1-4; averages allowed) and/or what the event log
implies (a search followed in the same session by a click, cart or purchase: grades 2, 3, 4; see
features/data/judgments.py). Queries are split (seeded) into fitting and validation queries. On
the fitting queries the adapter (features/models/query_adapter.py) is trained, its epoch count
chosen by k-fold cross-validation over them (`choice_folds`), and KEPT ONLY IF its out-of-fold
scores beat the zero-shot query vectors' (full-catalog nDCG@10 of dense retrieval; "beats": the
paired 95% bootstrap interval over the held-out queries, all the fitting queries unless there are so
many that fewer folds hold out 500, is above 0); then the fusion (features/retrieval/fusion.py) is
fitted on the fitting queries, with their out-of-fold adapted vectors where the adapter is kept (as
it will see new queries), and KEPT ONLY IF fitting beats the configured fusion out of fold in the
same sense; so are the search ranking's match weights, on query-term coverage of the title
(`title_match`), on the query naming what the title names (`head_match`) and on the query's word
pairs in the title (`phrase_match`), fitted together on top of `hand_weights`, each query ranked as
serving ranks it. The validation queries,
which nothing was fitted on, report what was chosen against zero-shot queries with the configured
fusion and weights. The evaluation (jobs.evaluate) makes the same three choices with the same
functions inside each of its folds. Too few judged queries: nothing is fitted and the version says
why. Writes <output_root>/search/<version>/ (search.json, the adapter
when kept, manifest.json); serving uses the newest version trained on the served index.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from features import artifacts as A
from features.config import ConfigError, to_dict
from features.data import schema as S
from features.data.judgments import judgments_from_events, read_judgments
from features.evaluation import search as SE
from features.evaluation.methods import Judgments
from features.evaluation.search import pool
from features.models import query_adapter as QA
from features.models.encoder import ZERO_SHOT, EncoderConfig
from features.models.onnx_encoder import runtime_encoder
from features.retrieval.catalog import load_catalog
from features.retrieval.fusion import fusion_ndcg_per_query
from features.retrieval.live import LiveCatalog, RetrievalConfig
from features.retrieval.ranking import HandWeights
from jobs.common import Steps, load_job_config, parse_args, run_job

KIND = "search"


@dataclass(frozen=True)
class TrainSearchConfig:
    judgments: str | None = None  # a query, item_id, grade file (Parquet or CSV); null: the log's only
    events: str | None = "features"  # features: the events the index's features version was built from | a path | null
    window_s: float = 1800.0  # a click, cart or purchase this long after a search is judged for it
    index: str | None = None  # the index version (its encoder and item vectors); null: the newest
    output_root: str = "artifacts"
    valid_share: float = 0.2  # of the judged queries, held out to report what the fit chose on unseen queries
    choice_folds: int = 5  # the adapter's epoch count and verdict, the fusion's and the search weights': k-fold CV over the fitting queries
    min_queries: int = 20  # fewer judged queries than this: nothing is fitted (the version says so)
    seed: int = 0
    threads: int = 2  # ONNX Runtime threads for encoding the queries
    retriever: RetrievalConfig = field(default_factory=RetrievalConfig)  # BM25F settings and the fusion to beat
    adapter: QA.AdapterParams = field(default_factory=QA.AdapterParams)
    # The search hand weights serving ranks with (serving/config.yaml's ranker.weights): the title
    # weight is fitted on top of them, and serving adds it to its own.
    hand_weights: HandWeights = field(default_factory=HandWeights)


def check_config(cfg: TrainSearchConfig) -> None:
    if not 0.0 < cfg.valid_share < 1.0:
        raise ConfigError(f"valid_share must be in (0, 1), got {cfg.valid_share}")
    if cfg.min_queries < 2:
        raise ConfigError(f"min_queries must be >= 2, got {cfg.min_queries}")
    if cfg.choice_folds < 2:
        raise ConfigError(f"choice_folds must be >= 2, got {cfg.choice_folds}")
    if cfg.window_s <= 0:
        raise ConfigError(f"window_s must be > 0, got {cfg.window_s}")
    if cfg.judgments is None and cfg.events is None:
        raise ConfigError("judgments and events are both null: give a judgments file and/or events with searches")


def _judgments(cfg: TrainSearchConfig, features_dir: str) -> tuple[pl.DataFrame, dict]:
    parts, info = [], {}
    if cfg.judgments is not None:
        j = read_judgments(cfg.judgments)
        parts.append(j)
        info["file"] = {"path": cfg.judgments, "rows": j.height}
    events = cfg.events
    if events == "features":
        events = (A.read_manifest(features_dir).get("inputs", {}).get("events") or {}).get("path")
    if events is not None:
        ev = A.read_parquet(events)
        j = judgments_from_events(ev, cfg.window_s).select("query", S.ITEM_ID, "grade")
        parts.append(j)
        info["events"] = {"path": events, "pairs": j.height, "searches": int((ev[S.EVENT_TYPE] == "search").sum())}
    if not parts:
        return pl.DataFrame(schema={"query": pl.String, S.ITEM_ID: pl.String, "grade": pl.Float64}), info
    # A pair judged in the file and implied by the log keeps the file's grade (a person judged it).
    return pl.concat(parts).unique(["query", S.ITEM_ID], keep="first", maintain_order=True), info


def run(cfg: TrainSearchConfig) -> str:
    check_config(cfg)
    steps = Steps("train_search")
    index_dir = cfg.index or A.latest_complete(cfg.output_root, "index")
    if index_dir is None:
        raise FileNotFoundError(f"no complete index version under {cfg.output_root}/index; run jobs.build_index first")
    idx_manifest = A.read_manifest(index_dir)
    features_dir = (idx_manifest.get("inputs", {}).get("features") or {}).get("path") or A.latest_complete(cfg.output_root, "features")
    steps(f"read the judgments; load the catalog of {index_dir}")
    judg, sources = _judgments(cfg, features_dir)
    catalog, index = load_catalog(A.local_copy(features_dir) if A.is_uri(features_dir) else features_dir,
                                  A.local_copy(index_dir) if A.is_uri(index_dir) else index_dir)
    known = judg.filter(pl.col(S.ITEM_ID).is_in(catalog.item_ids))
    if known.height < judg.height:
        print(f"  {judg.height - known.height:,} judgment row(s) name items the index does not hold: not used", flush=True)
    J = Judgments.from_frame(known, catalog)
    with_rel = [q for q in range(len(J.queries)) if (J.grades[q] > 1.0).any()]
    print(f"  {known.height:,} judgments, {len(J.queries):,} queries ({len(with_rel):,} with a relevant item); "
          f"sources: {json.dumps(sources)}", flush=True)
    t0 = time.perf_counter()
    metrics: dict = {"queries": len(J.queries), "queries_with_a_relevant_item": len(with_rel), "sources": sources}
    spec: dict = {"adapter": False, "fusion": asdict(cfg.retriever.fusion_params()), "fitted": False}
    adapter = None
    if len(with_rel) < cfg.min_queries:
        spec["why_not_fitted"] = (f"{len(with_rel)} judged queries with a relevant item, fewer than min_queries="
                                  f"{cfg.min_queries}: zero-shot queries and the configured fusion are kept")
        print(f"  {spec['why_not_fitted']}", flush=True)
    else:
        adapter = _fit(cfg, steps, index_dir, idx_manifest, catalog, index, J, with_rel, spec, metrics)
    metrics["fit_s"] = round(time.perf_counter() - t0, 2)
    version = A.new_version()
    out_dir = A.join(cfg.output_root, KIND, version)
    steps(f"write {out_dir}")
    with A.staged(out_dir) as local:
        if adapter is not None:
            adapter.save(local, metrics.get("adapter"))
        (local / QA.SEARCH_FILE).write_text(json.dumps(spec | {"metrics": metrics}, indent=1, default=str))
    A.write_manifest(out_dir, A.manifest(
        KIND, version, to_dict(cfg), inputs={"judgments": sources, "index": {"path": str(index_dir),
                                                                               "version": idx_manifest.get("version")}},
        outputs={"search": QA.SEARCH_FILE, "adapter": QA.WEIGHTS_FILE if adapter is not None else None}, metrics=metrics))
    steps("done")
    print(f"search -> {out_dir}: {summary(spec, metrics)}", flush=True)
    return out_dir


def _versus(report: dict | None) -> str:
    if not report:
        return ""
    lo, hi = report["paired_difference_ci95"]
    return f"{report['paired_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] nDCG@10 out of fold over {report['queries']} queries"


def summary(spec: dict, metrics: dict) -> str:
    """One line: what the version keeps and why, and what it buys on the held-out queries."""
    if not spec.get("fitted"):
        return spec.get("why_not_fitted", "nothing fitted")
    a, f, v = metrics.get("adapter", {}), metrics.get("fusion", {}), metrics.get("valid", {})
    adapter = ("query adapter kept" if spec["adapter"] else "query adapter not used") + (
        f" ({_versus(a['cross_validated_vs_zero_shot'])} against zero-shot)" if "cross_validated_vs_zero_shot" in a
        else f" ({a['why_not']})" if "why_not" in a else "")
    fusion = f"fusion {f.get('fitted')} " + ("kept" if f.get("kept") else "not kept, the configured one stays") + (
        f" ({_versus(f['cross_validated_vs_configured'])} against the configured fusion)"
        if "cross_validated_vs_configured" in f else f" ({f['why_not']})" if "why_not" in f else "")
    w = metrics.get("search_weights", {})
    title = (f"{SE.describe_weights(w['fitted'])} kept" if w.get("kept") else "match weights as configured") + (
        f" ({_versus(w['cross_validated_vs_configured'])} against the configured weights)"
        if "cross_validated_vs_configured" in w else f" ({w['why_not']})" if "why_not" in w else "")
    r = v.get("ranked", {})
    held = (f"; on {v['queries']} held-out queries, ranked as serving ranks, nDCG@10 {r['chosen']:.4f} against "
            f"{r['zero_shot_configured']:.4f} with zero-shot queries and the configured fusion and weights") if r else ""
    return f"{adapter}; {fusion}; {title}{held}"


def _fit(cfg, steps, index_dir, idx_manifest, catalog, index, J, with_rel, spec, metrics):
    steps("encode the queries with the index's encoder")
    enc_in = idx_manifest.get("inputs", {}).get("encoder", {})
    onnx = enc_in.get("onnx")
    local_index = A.local_copy(index_dir) if A.is_uri(index_dir) else index_dir
    encoder, _ = runtime_encoder(enc_in.get("checkpoint") or ZERO_SHOT, cfg.output_root, EncoderConfig(), "onnx",
                                 cfg.threads, onnx_dir=f"{local_index}/{onnx}" if onnx else None)
    q_emb = np.asarray(encoder.encode(J.queries, "query"), np.float32)
    vecs = catalog.vectors
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(with_rel)
    n_valid = max(1, int(round(len(order) * cfg.valid_share)))
    valid_q, fit_q = sorted(order[:n_valid].tolist()), sorted(order[n_valid:].tolist())

    steps(f"train the query adapter on {len(fit_q)} queries ({cfg.choice_folds}-fold cross-validation over them)")
    adapter, metrics["adapter"], fit_vecs = SE.fit_query_adapter(J, q_emb, vecs, fit_q, cfg.adapter, cfg.choice_folds, cfg.seed)
    spec["adapter"] = adapter is not None
    steps(f"fit the fusion of dense and lexical retrieval on the fitting queries ({cfg.choice_folds}-fold cross-validation)")
    live = LiveCatalog(catalog, index, None, cfg.retriever)
    default = cfg.retriever.fusion_params()
    chosen, metrics["fusion"] = SE.choose_fusion([pool(live, J, q, v) for q, v in fit_vecs.items()], default,
                                                 cfg.choice_folds, cfg.seed)
    spec["fusion"] = asdict(chosen)
    steps(f"fit the search ranking's match weights on the fitting queries ({cfg.choice_folds}-fold cross-validation)")
    weights, metrics["search_weights"] = SE.choose_search_weights(live, J, fit_vecs, cfg.hand_weights, chosen,
                                                                  cfg.choice_folds, cfg.seed)
    spec["search_weights"] = metrics["search_weights"]["fitted"] if metrics["search_weights"]["kept"] else {}
    spec["fitted"] = True
    # What was chosen, on the held-out queries nothing was fitted on, against zero-shot queries with
    # the configured fusion: the version's honest estimate of what the search fit buys.
    qv = adapter.apply(q_emb) if adapter is not None else q_emb
    mine = fusion_ndcg_per_query([pool(live, J, q, qv[q]) for q in valid_q], chosen, 10)
    base = fusion_ndcg_per_query([pool(live, J, q, q_emb[q]) for q in valid_q], default, 10)
    metrics["valid"] = {"zero_shot_configured_fusion": round(SE.nanmean(base), 6), "chosen": round(SE.nanmean(mine), 6),
                        "queries": len(valid_q), "chosen_vs_zero_shot_configured": SE.paired(mine, base, cfg.seed)}
    # ... and ranked as serving ranks them (candidates, then the search hand weights)
    mine = SE.ranked_ndcg_per_query(live, J, {q: qv[q] for q in valid_q}, [weights], chosen)[:, 0]
    base = SE.ranked_ndcg_per_query(live, J, {q: q_emb[q] for q in valid_q}, [cfg.hand_weights], default)[:, 0]
    metrics["valid"]["ranked"] = {"zero_shot_configured": round(SE.nanmean(base), 6), "chosen": round(SE.nanmean(mine), 6),
                                  "chosen_vs_zero_shot_configured": SE.paired(mine, base, cfg.seed)}
    return adapter


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Fit the query adapter, the retrieval fusion and the search match weights on the shop's judgments.", "train_search.yaml", argv)

    def body() -> int:
        run(load_job_config(TrainSearchConfig, args))
        return 0

    return run_job("train_search", body)


if __name__ == "__main__":
    raise SystemExit(main())
