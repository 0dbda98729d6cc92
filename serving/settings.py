"""The serving configuration: one frozen dataclass tree, read from serving/config.yaml's `args`.

The application builder (serving/app.py) resolves "latest" to concrete artifact folders once, so
every replica of every deployment loads the same versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features import artifacts as A
from features.config import ConfigError, from_dict
from features.models.encoder import LATEST, ZERO_SHOT, EncoderConfig
from features.models.learned_ranker import SEGMENTS, check_explanations, served_segments, shoppers
from features.profiles import events as EV
from features.profiles.profile import ProfileParams
from features.profiles.store import StateLimits
from features.retrieval.live import RetrievalConfig
from features.retrieval.ranking import HandWeights

FROM_INDEX = "from-index"
PLACEMENTS = ("ingress", "deployment")


@dataclass(frozen=True)
class EncoderServing:
    spec: str = FROM_INDEX  # from-index (the encoder the index was built with) | latest | zero-shot | a folder
    zero_shot: EncoderConfig = EncoderConfig()
    # onnx: ONNX Runtime, the model the index job exported into the index version (exported at
    # start when the index has none or spec is not from-index) | torch: eager PyTorch
    runtime: str = "onnx"
    # ingress: each Ingress replica encodes queries itself (one hop less; serving/encoder.py) |
    # deployment: queries go to the QueryEncoder deployment, batched (e.g. a GPU encoder replica).
    # Item upserts always use the QueryEncoder deployment.
    placement: str = "ingress"
    max_batch_size: int = 16  # @serve.batch: queries encoded in one forward pass
    batch_wait_timeout_s: float = 0.002
    threads: int = 1  # intra-op threads per replica; replicas, not threads, scale it
    # int8-block | fp32 | int8: the query tower as a quantised ONNX graph made at start (item vectors
    # stay float32; any but fp32 needs runtime onnx). What each costs: docs/serving.md, bench/encoder.py.
    query_precision: str = "int8-block"

    def __post_init__(self) -> None:
        from features.models.onnx_encoder import check_precision, check_runtime

        try:
            check_runtime(self.runtime)
            check_precision(self.query_precision, self.runtime)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.threads < 1:
            raise ConfigError(f"encoder.threads must be >= 1, got {self.threads}")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"encoder.placement={self.placement!r}; allowed: {', '.join(PLACEMENTS)}")
    cache_size: int = 10_000  # query -> embedding LRU (0: off)


@dataclass(frozen=True)
class ProfilesServing:
    params: ProfileParams = ProfileParams()
    max_users_in_memory: int = 100_000
    snapshot_every_events: int = 5_000
    snapshot_every_s: float = 30.0
    fsync: bool = True  # fsync the event log before acknowledging (off only for throwaway tests)
    seed: bool = True  # seed profiles from the served features version's users (again for a newer version)
    limits: StateLimits = StateLimits()  # de-duplication window, log segment size and retention


@dataclass(frozen=True)
class RateLimitServing:
    # Per client and per Ingress replica: a client is a valid API key, else its address (an
    # unknown key counts as its address); over the limit it gets 429 with Retry-After. 0: off.
    requests_per_s: float = 500.0
    burst: int = 1000
    max_clients: int = 100_000  # buckets kept (least recently used evicted)
    # Proxies in front of the app (CIDRs) whose X-Forwarded-For is believed; from anyone else the
    # header is ignored (it could be forged). Empty: the TCP peer is the client.
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from features.admission import parse_networks

        parse_networks(self.trusted_proxies)  # a typo fails the deployment, naming the entry


@dataclass(frozen=True)
class OverloadServing:
    # Load shedding per Ingress replica: a request arriving while max_in_flight are in progress
    # gets 503 + Retry-After at once instead of queueing until the client gives up; writes (events,
    # items, forget) may use write_reserve more slots. 0: off. Sized for a 2-CPU node, where about
    # 40 mixed requests/s are served (bench/soak.py): 32 in flight keeps admitted requests under
    # about a second; raise it with the hardware.
    max_in_flight: int = 32
    write_reserve: int = 16


@dataclass(frozen=True)
class RankerServing:
    # latest: the newest complete artifacts/ranker/<version> (the hand-set weights when there is
    # none) | none: always the hand-set weights | a ranker version folder (must exist)
    model: str = LATEST
    weights: HandWeights = HandWeights()  # for modes the model was not trained on, and without a model
    # the learned model's per-feature contributions behind the reasons: treeshap (Shapley values) |
    # path (decision paths: ranking ~3 ms cheaper per recommendation, but the first reason differs
    # from TreeSHAP's for 15-41% of results; bench/results/explanations.json); a request's
    # "reasons": false computes neither
    explanations: str = "treeshap"

    def __post_init__(self) -> None:
        check_explanations(self.explanations)


@dataclass(frozen=True)
class ServingConfig:
    artifacts_root: str = "artifacts"
    features: str = LATEST  # latest | a features version folder
    index: str = LATEST  # latest | an index version folder
    state_dir: str = "state"  # event log, profile snapshot, item log (shared storage on multi-node)
    # The variable holding the API key(s), comma-separated (one per client, or old and new during
    # a rotation). Writes need one of them; reads are open, and a valid key gets its own rate bucket.
    api_key_env: str = "INTENTLY_API_KEY"
    # With no key configured, writes (events, items, forget) are refused (403) unless this is true:
    # only for a local demo or a private network. The start-up banner and /healthz say which.
    allow_anonymous_writes: bool = False
    max_body_bytes: int = 1 << 20
    max_k: int = 100
    max_query_chars: int = 256
    max_events_per_request: int = 1000
    max_future_s: float = EV.MAX_FUTURE_S  # events stamped later than now + this are rejected
    metrics_push_s: float = 1.0  # how often each Ingress replica reports its metrics to Telemetry
    rate_limit: RateLimitServing = RateLimitServing()
    overload: OverloadServing = OverloadServing()
    encoder: EncoderServing = EncoderServing()
    retriever: RetrievalConfig = RetrievalConfig()
    # Where reads (search, recommend, similar) are retrieved and ranked. ingress: in each Ingress
    # replica, on its own copy of the catalog kept current from the shared item log (no Serve hop
    # on the read path; one catalog copy per Ingress replica; serving/retriever.py) | deployment:
    # in the Retriever deployment's replicas. Item upserts always go to the Retriever deployment.
    retriever_placement: str = "ingress"
    ranker: RankerServing = RankerServing()
    profiles: ProfilesServing = ProfilesServing()
    # The behaviour model (jobs.train_sequence): latest = the newest complete sequence version
    # trained on the served index (none when there is none) | none | a sequence version folder.
    sequence: str = LATEST
    # The query adapter and retrieval fusion fitted on the shop's judgments (jobs.train_search):
    # latest = the newest complete search version trained on the served index (none when there is
    # none) | none | a search version folder.
    search: str = LATEST
    # The newest artifact versions at deploy time (`make serve` and the pipeline render it): Serve
    # rebuilds the app only when its config changes, so a newer version changes this and is loaded.
    revision: str = ""

    def __post_init__(self) -> None:
        if self.retriever_placement not in PLACEMENTS:
            raise ConfigError(f"retriever_placement={self.retriever_placement!r}; allowed: {', '.join(PLACEMENTS)}")

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> "ServingConfig":
        return from_dict(cls, dict(args or {}))


@dataclass(frozen=True)
class Resolved:
    """Concrete folders for one deployment of the app."""

    features_dir: str
    index_dir: str
    encoder_spec: str  # a checkpoint folder or "zero-shot"
    state_dir: str
    ranker_dir: str | None = None  # None: hand-set weights
    ranker_segments: tuple[str, ...] = SEGMENTS  # the shoppers whose recommendations ranker_dir ranks
    versions: dict[str, str] = field(default_factory=dict)
    sequence_dir: str | None = None  # None: no behaviour model
    encoder_onnx: str | None = None  # the index's exported encoder when serving uses the index's encoder
    search_dir: str | None = None  # None: zero-shot queries and the configured fusion


def _complete(path: str | None) -> bool:
    if not path:
        return False
    fs, inner = A.resolve(A.join(path, A.MANIFEST))
    return fs.get_file_info(inner).type == A.pafs.FileType.File


def _local(path: str) -> str:
    """A local folder for a version: itself (made absolute), or a cached copy of a URI's files."""
    return A.local_copy(path) if A.is_uri(path) else str(Path(path).resolve())


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def resolve(cfg: ServingConfig) -> Resolved:
    """Turn "latest"/"from-index" into local folders (versions under a URI artifacts_root, e.g.
    s3://..., are copied once into the local cache); FileNotFoundError names what is missing."""
    root = cfg.artifacts_root
    index_dir = A.latest_complete(root, "index") if cfg.index == LATEST else cfg.index
    if not _complete(index_dir):
        raise FileNotFoundError(f"index={cfg.index!r}: no complete index version under {root}/index; "
                                "run `make index` (python -m jobs.build_index)")
    assert index_dir is not None
    index_manifest = A.read_manifest(index_dir)
    if cfg.features == LATEST:
        features_dir = index_manifest.get("inputs", {}).get("features", {}).get("path") or A.latest_complete(root, "features")
    else:
        features_dir = cfg.features
    if not _complete(features_dir):
        raise FileNotFoundError(f"features={cfg.features!r}: no complete features version; run `make features`")
    assert features_dir is not None
    if cfg.encoder.spec == FROM_INDEX:
        enc = index_manifest.get("inputs", {}).get("encoder", {})
        encoder_spec = enc.get("checkpoint") or ZERO_SHOT
    else:
        encoder_spec = cfg.encoder.spec
    if encoder_spec not in (ZERO_SHOT, LATEST):
        fs, inner = A.resolve(encoder_spec)
        if fs.get_file_info(inner).type == A.pafs.FileType.NotFound:
            raise FileNotFoundError(f"encoder.spec={encoder_spec!r} does not exist")
    state_dir = str(Path(cfg.state_dir).expanduser().resolve())
    ranker_note, segments = None, SEGMENTS
    if cfg.ranker.model == LATEST:
        ranker_dir = A.latest_complete(root, "ranker")
        # The house rule, as for the encoder against zero-shot: a version ranks only the shoppers
        # (with a history, guests) on whose valid lists it beat the hand-set weights, unless named.
        segments = served_segments(A.read_manifest(ranker_dir).get("metrics", {})) if ranker_dir else SEGMENTS
        if ranker_dir and not segments:
            ranker_note = f"hand-set weights (ranker {_name(ranker_dir)} did not beat them on validation)"
            ranker_dir = None
        elif ranker_dir and segments != SEGMENTS:
            ranker_note = (f"{_name(ranker_dir)} for {shoppers(segments)}, hand-set "
                           "weights for the others (it did not beat them on their validation lists)")
    elif cfg.ranker.model == "none":
        ranker_dir = None
    else:
        ranker_dir = cfg.ranker.model
        if not _complete(ranker_dir):
            raise FileNotFoundError(f"ranker.model={ranker_dir!r}: not a complete ranker version (no {A.MANIFEST}); "
                                    "allowed: latest, none, or a folder written by jobs.train_ranker")
    sequence_dir = _trained_on_index(cfg, "sequence", cfg.sequence, "jobs.train_sequence", index_manifest)
    search_dir = _trained_on_index(cfg, "search", cfg.search, "jobs.train_search", index_manifest)
    versions = {"index": _name(index_dir), "features": _name(features_dir),
                "sequence": _name(sequence_dir) if sequence_dir else "none",
                "search": _name(search_dir) if search_dir else "none",
                "encoder": encoder_spec if encoder_spec == ZERO_SHOT else _name(encoder_spec.rstrip("/").rsplit("/", 1)[0]),
                "ranker": ranker_note or (_name(ranker_dir) if ranker_dir else "hand-set weights")}
    if encoder_spec not in (ZERO_SHOT, LATEST):
        encoder_spec = _local(encoder_spec)
    onnx = index_manifest.get("inputs", {}).get("encoder", {}).get("onnx") if cfg.encoder.spec == FROM_INDEX else None
    return Resolved(_local(features_dir), _local(index_dir), encoder_spec, state_dir,
                    ranker_dir=_local(ranker_dir) if ranker_dir else None, ranker_segments=segments, versions=versions,
                    sequence_dir=_local(sequence_dir) if sequence_dir else None,
                    encoder_onnx=str(Path(_local(index_dir)) / onnx) if onnx else None,
                    search_dir=_local(search_dir) if search_dir else None)


def _trained_on_index(cfg: ServingConfig, kind: str, value: str, job: str, index_manifest: dict) -> str | None:
    """The `kind` version to serve for `value` (latest | none | a folder): latest is the newest
    complete version trained on THIS index (its vectors are the model's input space)."""
    if value == "none":
        return None
    if value != LATEST:
        if not _complete(value):
            raise FileNotFoundError(f"{kind}={value!r}: not a complete {kind} version (no {A.MANIFEST}); "
                                    f"allowed: latest, none, or a folder written by {job}")
        return value
    root = A.join(cfg.artifacts_root, kind)
    fs, inner = A.resolve(root)
    if fs.get_file_info(inner).type == A.pafs.FileType.NotFound:
        return None
    want = index_manifest.get("version")
    for info in sorted(fs.get_file_info(A.pafs.FileSelector(inner)), key=lambda i: i.base_name, reverse=True):
        path = A.join(root, info.base_name)
        if info.type == A.pafs.FileType.Directory and _complete(path):
            if A.read_manifest(path).get("inputs", {}).get("index", {}).get("version") == want:
                return path
    return None


__all__ = ["ServingConfig", "RankerServing", "OverloadServing", "Resolved", "resolve", "ConfigError", "FROM_INDEX"]
