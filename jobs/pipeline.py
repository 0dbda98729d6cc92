"""From a shop's logs to a running API in one job: import -> features -> encoder -> index -> search (query
adapter, fusion) -> behaviour model -> ranker -> serve.

    ray job submit --address http://<head>:8265 --working-dir . -- python -m jobs.pipeline \
        --set events=s3://shop/events/ --set items=s3://shop/items.parquet --set output_root=s3://shop/intently
    make run EVENTS=<path or URI> ITEMS=<path or URI> [MAPPING=<mapping.yaml | auto | recbole | uci-online-retail>]

Every stage is the same job a user can run alone (jobs.import_events, build_features, train_encoder,
build_index, train_search, train_sequence, train_ranker), called in this one Ray job with the same config keys; `stage_args.<job>`
adds `--set` overrides to one stage. Stages that improve results but are not required fall back
instead of failing the run, and say so: a fine-tune that cannot run (too little data) leaves the
zero-shot encoder, a ranker that cannot be trained leaves the hand-set weights. On a short log the
split and ranker windows shrink to fit (printed). The Serve app is then deployed on this cluster
from the result (artifacts read from output_root, local or URI) and answers sample requests chosen
from the shop's own data.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from features import artifacts as A
from features.config import ConfigError
from features.data import schema as S
from jobs.common import RayConfig, cluster_gpus, fine_tune_plan, init_ray, load_job_config, parse_args, run_job

N_STAGES = 9  # import, features, encoder, index, search, features before the label window, behaviour model, ranker, serve
STAGES = ("import_events", "build_features", "train_encoder", "build_index", "train_search", "train_sequence",
          "train_ranker")


@dataclass(frozen=True)
class StageArgs:
    """Extra `--set key=value` overrides per stage ("--config=<yaml>" replaces the stage's config file)."""

    import_events: tuple[str, ...] = ()
    build_features: tuple[str, ...] = ()
    train_encoder: tuple[str, ...] = ("train.max_time_s=240", "test_examples=1000")
    build_index: tuple[str, ...] = ()
    train_search: tuple[str, ...] = ()
    # On 2 CPUs the behaviour model reaches 98% of its best validation NDCG@10 by 150 s (the curve in
    # bench/results/evaluation/); the cap keeps `make demo` short. More CPUs or a GPU: raise it.
    train_sequence: tuple[str, ...] = ("model.max_time_s=150",)
    train_ranker: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeployConfig:
    enabled: bool = True
    address: str | None = None   # the cluster's dashboard for `serve deploy`; null: this job's cluster
    state_dir: str = "state"     # the app's online state (event log, profiles); local to the serving node
    http_port: int | None = None  # null: serving/config.yaml (8000)
    demo: bool = True            # send sample requests chosen from the data once healthy
    overrides: tuple[str, ...] = ()  # serving app args, e.g. allow_anonymous_writes=true


@dataclass(frozen=True)
class PipelineConfig:
    events: str | None = None    # canonical events (or the shop's export when mapping is set); path or URI
    items: str | None = None
    mapping: str | None = None   # null: inputs are canonical; a mapping YAML or preset (auto, recbole, uci-online-retail)
    output_root: str = "artifacts"
    # auto: fine-tune the text encoder on the cluster's GPUs, and keep the zero-shot encoder on a
    # CPU-only cluster (where the demo's budget rarely beats it); true: fine-tune on CPUs as well.
    fine_tune: bool | Literal["auto"] = "auto"
    ranker: bool = True          # false: the hand-set ranking weights
    sequence: bool = True        # false: no behaviour model (retrieval source and ranking features)
    search: bool = True          # false: no query adapter / fitted fusion (jobs.train_search)
    judgments: str | None = None  # query,item_id,grade file for jobs.train_search (the log's searches are used too)
    ranker_window_days: float = 30.0  # label window of the learned ranker (shrunk to a quarter of a short log)
    stage_args: StageArgs = field(default_factory=StageArgs)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    log_dir: str | None = None   # local folder for each stage's full output; null: <output_root>/logs/<version>
    verbose: bool = False        # true: every stage's output on the terminal instead
    ray: RayConfig = field(default_factory=RayConfig)


def _sets(pairs: dict[str, object], extra: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for k, v in pairs.items():
        out += ["--set", f"{k}={v}"]
    for e in extra:  # "key=value", or "--config=<yaml>" to start a stage from another config file
        out += ["--config", e.split("=", 1)[1]] if e.startswith("--config=") else ["--set", e]
    return out


def _span_days(events: str) -> float | None:
    """Days between the first and last event, when ts is typed (else None: defaults apply)."""
    try:
        ts = A.read_parquet(events, columns=[S.TS]).get_column(S.TS)
    except Exception:  # noqa: BLE001 - not Parquet, or no ts column: validation will say so
        return None
    if not ts.dtype.is_temporal() or ts.drop_nulls().is_empty():
        return None
    return (ts.max() - ts.min()).total_seconds() / 86400.0  # type: ignore[operator]


def _dashboard(cfg: DeployConfig) -> str | None:
    if cfg.address:
        return cfg.address
    try:
        from ray._private.services import get_webui_url_from_internal_kv

        url = get_webui_url_from_internal_kv()
    except Exception:  # noqa: BLE001 - no dashboard on this cluster
        url = None
    return None if not url else url if url.startswith("http") else f"http://{url}"


class Run:
    """Runs stages; each stage's full output goes to <log_dir>/<n>-<stage>.log (or the terminal
    with verbose), and the terminal gets one line per stage plus the stage's closing summary."""

    def __init__(self, log_dir: str | None, verbose: bool) -> None:
        self.t0 = time.perf_counter()
        self.summary: list[str] = []
        self.verbose = verbose
        self.log_dir = Path(log_dir) if log_dir else None
        if self.log_dir and not verbose:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            print(f"stage logs: {self.log_dir}", flush=True)

    def stage(self, n: int, name: str, fn, required: bool = True, show: bool = False) -> bool:
        print(f"[{n}/{N_STAGES}] {name} ...", flush=True)
        t = time.perf_counter()
        quiet = not (self.verbose or show or self.log_dir is None)
        log = self.log_dir / f"{n}-{name.split(' ')[0]}.log" if quiet else None
        error = None
        with open(log or os.devnull, "w") as f, (_to_file(f) if log else contextlib.nullcontext()):
            try:
                rc = fn()
            except (Exception, SystemExit) as e:  # noqa: BLE001 - optional stages fall back; required ones re-raise
                if required:
                    raise
                error, rc = f"{type(e).__name__}: {e}", 1
        took = time.perf_counter() - t
        status = "ok" if rc == 0 else "FAILED" if required else "skipped"
        print(f"      {status} in {took:.0f}s" + (f"  (log: {log})" if log else ""), flush=True)
        if log:
            lines = log.read_text(errors="replace").splitlines()
            tail = _closing_lines(lines) if rc == 0 else lines[-25:]
            print("\n".join(f"      | {line}" for line in tail), flush=True)
        if error:
            print(f"      {error}", flush=True)
        self.summary.append(f"  {name:<28} {status} in {took:.0f}s")
        if rc != 0 and required:
            raise RuntimeError(f"stage {name} failed (exit code {rc}); see {log or 'its output above'}")
        return rc == 0


@contextlib.contextmanager
def _to_file(f):
    """Send this process's stdout and stderr, file descriptors included (Ray's C++ core and its
    worker-log monitor write there too), to `f` for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    try:
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        f.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _closing_lines(lines: list[str], most: int = 12) -> list[str]:
    """A job's own summary: what it prints after its last `[job n] done` step (or, when nothing
    follows it, the few lines just before it)."""
    def plain(line: str) -> bool:
        return bool(line.strip()) and not line.startswith(("[", "\x1b", "(", "resolved config", "{", "}", " ")) \
            or line.startswith("  ") and "done in" not in line and not line.startswith("  \"")

    done = [i for i, line in enumerate(lines) if line.startswith("[") and "] done (t=" in line]
    body = [line for line in (lines[done[-1] + 1:] if done else lines) if plain(line) and "finished in" not in line]
    if not body and done:
        body = [line for line in lines[:done[-1]] if plain(line)][-4:]
    return body[-most:] if not done else body[:most]


def run(cfg: PipelineConfig) -> int:
    from jobs import (
        build_features,
        build_index,
        import_events,
        train_encoder,
        train_ranker,
        train_search,
        train_sequence,
    )

    mapping_file = cfg.mapping is not None and cfg.mapping not in import_events.PRESETS
    if not mapping_file and (not cfg.events or (not cfg.items and cfg.mapping not in ("uci-online-retail", "auto"))):
        # (a mapping file names its own files, or takes the items from the events file; so may a guessed one)
        raise ConfigError("events and items are required (paths or URIs); e.g. make run EVENTS=... ITEMS=..., or "
                          "make run EVENTS=<a shop's export> MAPPING=auto")
    init_ray(cfg.ray)
    root, sa = cfg.output_root, cfg.stage_args
    r = Run(cfg.log_dir or (A.join(root, "logs", A.new_version()) if not A.is_uri(root)
                            else str(A.cache_root() / "logs" / A.new_version())), cfg.verbose)
    events, items = cfg.events, cfg.items
    if cfg.mapping:
        out = A.join(root, "canonical", A.new_version())
        r.stage(1, f"import the shop's export ({cfg.mapping})", lambda: import_events.main(_sets(
            {"mapping": cfg.mapping, "output": out, **({"events": events} if events else {}),
             **({"items": items} if items else {})}, sa.import_events)))
        events, items = A.join(out, "events.parquet"), A.join(out, "items.parquet")
    else:
        r.summary.append("  import           (inputs are canonical)")
    assert items is not None

    span = _span_days(events)
    split: dict[str, object] = {}
    window = cfg.ranker_window_days
    if span is not None and span < 300:
        days = round(max(span * 0.1, 1 / 24), 3)
        split = {"split.valid_days": days, "split.test_days": days}
        window = round(min(window, max(span * 0.25, 1 / 24)), 3)
        print(f"the log spans {span:.1f} days: valid/test splits of {days} days, ranker window {window} days", flush=True)

    r.stage(2, "features", lambda: build_features.main(_sets(
        {"events": events, "items": items, "output_root": root, **split}, sa.build_features)))
    encoder = "zero-shot"
    tune, gpu_workers, why = fine_tune_plan(cfg.fine_tune, cluster_gpus())
    gpu_args = ("train.use_gpu=true", f"train.num_workers={gpu_workers}") if gpu_workers else ()
    if why:
        print(f"encoder: {why}", flush=True)
    if not tune and why:
        r.summary.append(f"  {'encoder fine-tune':<28} skipped (no GPU; fine_tune=auto)")
    if tune:
        if r.stage(3, "encoder fine-tune", lambda: train_encoder.main(_sets({"output_root": root},
                                                                            gpu_args + sa.train_encoder)),
                   required=False):
            version = A.latest_complete(root, "encoder")
            beats = A.read_manifest(version).get("metrics", {}).get("beats_zero_shot_on_valid") if version else None
            if beats is False:  # the house rule: a fine-tune is used only where it beats zero-shot on valid
                print("encoder: the fine-tune did not beat the zero-shot model on its valid split (paired 95% "
                      "interval over its valid examples not above 0); "
                      "the index uses the zero-shot encoder", flush=True)
            else:
                encoder = version or "zero-shot"
        else:
            print("encoder: the fine-tune did not finish; the index uses the zero-shot encoder", flush=True)
    r.stage(4, "index", lambda: build_index.main(_sets({"output_root": root, "encoder": encoder}, sa.build_index)))
    search = "zero-shot queries"
    if cfg.search:
        # The query adapter, the fusion and the match weights, from the judgments file and the log's
        # searches; each kept only where it beats the defaults out of fold (a log without searches
        # fits nothing).
        if r.stage(5, "search (query adapter, fusion, match weights) from judgments", lambda: train_search.main(_sets(
                {"output_root": root, "events": events, **({"judgments": cfg.judgments} if cfg.judgments else {})},
                sa.train_search)), required=False):
            sv = A.latest_complete(root, "search")
            m = A.read_manifest(sv) if sv else {}
            fitted = "valid" in (m.get("metrics") or {})
            search = ("query adapter" if (m.get("outputs") or {}).get("adapter") else
                      "zero-shot queries (no adapter beat them)" if fitted else "zero-shot queries (too few judged searches)")
            title = (m.get("metrics") or {}).get("search_weights") or {}
            if title.get("kept"):
                from features.evaluation.search import describe_weights

                search += ", " + describe_weights(title["fitted"])
    ranker, behaviour = "hand-set weights", "none"
    stage_root = A.join(root, "ranker_stage")
    as_of = None
    if cfg.ranker:
        # The ranker learns from a label window at the end of the log: its features (and the
        # behaviour model it reads) are built from the events before that window only.
        if r.stage(6, "features before the ranker's label window", lambda: build_features.main(_sets(
                {"events": events, "items": items, "output_root": stage_root, "as_of": f"latest-{window:g}d", **split},
                sa.build_features)), required=False):
            fv = A.latest_complete(stage_root, "features")
            as_of = A.read_manifest(fv).get("metrics", {}).get("as_of") if fv else None
    seq_dir = None
    if cfg.sequence:
        # One model serves and feeds the ranker: trained before the label window when there is
        # one (the ranker must not see features computed from its labels), on everything otherwise.
        if r.stage(7, "behaviour model (sequence transformer)", lambda: train_sequence.main(_sets(
                {"events": events, "output_root": root, **({"until": as_of} if as_of else {})}, sa.train_sequence)),
                required=False):
            seq_dir = A.latest_complete(root, "sequence")
            behaviour = seq_dir.rstrip("/").rsplit("/", 1)[-1] if seq_dir else "none"
        else:
            print("behaviour model: not trained; serving goes on without it", flush=True)
    if cfg.ranker and as_of is not None:
        if r.stage(8, "learned ranker", lambda: train_ranker.main(_sets(
                {"events": events, "items": items, "output_root": root, "features_root": stage_root,
                 "window_days": window, **({"sequence": seq_dir} if seq_dir else {})}, sa.train_ranker)),
                required=False):
            rv = A.latest_complete(root, "ranker")
            from features.models.learned_ranker import SEGMENTS, served_segments, shoppers

            segs = served_segments(A.read_manifest(rv).get("metrics", {})) if rv else SEGMENTS
            ranker = ("learned" if segs == SEGMENTS else
                      f"learned for {shoppers(segs)}, hand-set weights for the others"
                      if segs else "hand-set weights (the learned ranker did not beat them on validation)")
        else:
            print("ranker: not trained; serving uses the hand-set weights", flush=True)
    elif cfg.ranker:
        print("ranker: no features before its label window; serving uses the hand-set weights", flush=True)
    served = None
    if cfg.deploy.enabled:
        served = _deploy(cfg, r)
    print(f"\npipeline finished in {time.perf_counter() - r.t0:.0f}s", flush=True)
    print("\n".join(r.summary))
    print(f"  encoder: {'fine-tuned ' + encoder.rstrip('/').rsplit('/', 1)[-1] if encoder != 'zero-shot' else encoder}; "
          f"search: {search}; behaviour model: {behaviour}; ranker: {ranker}; artifacts: {root}")
    if served:
        print(f"  serving: {served}")
    return 0


def _deploy(cfg: PipelineConfig, r: Run) -> str | None:
    import ray

    from serving import deploy as D

    joined = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if not joined:
        print(f"[{N_STAGES}/{N_STAGES}] serve: skipped: this run started a private Ray that ends with it; run the pipeline on a "
              "cluster (`ray job submit`, or `make run`) to deploy", flush=True)
        r.summary.append("  serve            skipped (no cluster)")
        return None
    address = _dashboard(cfg.deploy)
    if address is None:
        raise RuntimeError("deploy: this cluster has no dashboard to `serve deploy` to; set deploy.address")
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))  # the replicas and limits are sized to the cluster
    ray.shutdown()  # the Serve app outlives this job; nothing of it should hang on the driver
    base = f"http://127.0.0.1:{cfg.deploy.http_port or 8000}"
    r.stage(9, f"serve (serve deploy to {address})", lambda: D.deploy(
        cfg.output_root, cfg.deploy.state_dir, address, list(cfg.deploy.overrides), cfg.deploy.demo, cfg.deploy.http_port,
        cpus), show=True)
    return base


def main(argv: list[str] | None = None) -> int:
    args = parse_args("From a shop's logs to a running API in one job.", "pipeline.yaml", argv)
    return run_job("pipeline", lambda: run(load_job_config(PipelineConfig, args)))


if __name__ == "__main__":
    sys.exit(main())
