"""The learned ranker: LightGBM lambdarank over `features.ranking.candidate_features`.

Training data is candidate lists: one group per request (the candidates the real retrieval stage
returned for it), one row per candidate with the FEATURE_NAMES features and a graded label (what
the shopper did next: 1 for an item of the next basket, 0 otherwise; search: the judged grade).
The model is stored as LightGBM's text format next to a JSON manifest (feature names, importances,
training metrics), never pickled, so loading an artifact cannot execute code.

Explanations: per-feature contributions take the place of the hand-set weight * feature products,
so the same `ranking.reasons` turn the largest ones into "because you viewed X"-style reasons.
`explanations="treeshap"` (the default) is LightGBM's `pred_contrib=True`; "path" credits each split
on a row's decision paths to its feature (features/models/tree_paths.py): ~5x cheaper, but it names
different reasons for many results (bench/explanations.py), so it is opt-in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from features import artifacts as A
from features.models.tree_paths import PathAttribution
from features.retrieval.ranking import FEATURE_NAMES, RankContext

MODEL_FILE = "model.txt"
MODES = ("search", "recommend")
# Shoppers with a history in their profile, and guests: jobs.train_ranker compares the learned model
# with the hand-set weights on each, and serving uses it only where it won (`served_segments`).
SEGMENTS = ("with_history", "without_history")
EXPLANATIONS = ("path", "treeshap")


def check_explanations(value: str, field: str = "ranker.explanations") -> str:
    if value not in EXPLANATIONS:
        raise ValueError(f"{field}: {value!r}; allowed: {', '.join(EXPLANATIONS)}")
    return value


@dataclass(frozen=True)
class RankerParams:
    """LightGBM lambdarank settings (small data, few features: shallow trees, early stopping)."""

    num_leaves: int = 15
    learning_rate: float = 0.05
    num_rounds: int = 300
    min_data_in_leaf: int = 50
    feature_fraction: float = 1.0
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    early_stopping_rounds: int = 30
    eval_at: tuple[int, ...] = (10,)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_leaves", "num_rounds", "min_data_in_leaf", "early_stopping_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"ranker.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate <= 1:
            raise ValueError(f"ranker.learning_rate must be in (0, 1], got {self.learning_rate}")

    def lgb_params(self) -> dict:
        return {
            "objective": "lambdarank", "metric": "ndcg", "eval_at": list(self.eval_at),
            "num_leaves": self.num_leaves, "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction, "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
            "lambda_l2": self.lambda_l2, "seed": self.seed, "deterministic": True, "force_row_wise": True,
            "num_threads": 1, "verbosity": -1,
        }


def group_sizes(group_ids: np.ndarray) -> np.ndarray:
    """Sizes of consecutive runs of equal group ids (rows must be grouped, as LightGBM needs)."""
    g = np.asarray(group_ids)
    if not len(g):
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    if len(np.unique(g)) != len(starts):
        raise ValueError("rows of one group must be consecutive")
    return np.diff(np.r_[starts, len(g)]).astype(np.int64)


def informative_groups(labels: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Mask of rows whose group has at least two distinct labels: a list with no positive (or no
    negative) gives lambdarank no pair to learn from and only dilutes its NDCG."""
    labels, group_ids = np.asarray(labels), np.asarray(group_ids)
    keep = np.zeros(len(labels), dtype=bool)
    sizes = group_sizes(group_ids)
    start = 0
    for n in sizes:
        seg = labels[start:start + n]
        keep[start:start + n] = seg.min() != seg.max()
        start += n
    return keep


class LearnedRanker:
    """A trained lambdarank booster per mode it was trained for."""

    def __init__(self, boosters: dict, manifest: dict, explanations: str = "treeshap") -> None:
        self.boosters = boosters  # mode -> lightgbm.Booster
        self.manifest = manifest
        self.explanations = check_explanations(explanations)
        self.paths = {mode: PathAttribution(b) for mode, b in boosters.items()} if explanations == "path" else {}
        # mode -> the FEATURE_NAMES columns its model reads, in its order (None: all of them): a
        # model trained before features were added keeps working on the ones it knows.
        self.columns: dict[str, np.ndarray | None] = {}
        for mode, b in boosters.items():
            names = tuple(b.feature_name())
            self.columns[mode] = None if names == FEATURE_NAMES else np.array([FEATURE_NAMES.index(n) for n in names])

    def _x(self, x: np.ndarray, mode: str) -> np.ndarray:
        cols = self.columns.get(mode)
        x = np.asarray(x, np.float64)
        return x if cols is None else x[:, cols]

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.boosters)

    def has(self, mode: str) -> bool:
        return mode in self.boosters

    def score(self, x: np.ndarray, mode: str) -> np.ndarray:
        """(C,) scores of (C, F) features."""
        if not len(x):
            return np.zeros(0, np.float64)
        return np.asarray(self.boosters[mode].predict(self._x(x, mode), num_threads=1), dtype=np.float64)

    def contributions(self, x: np.ndarray, mode: str) -> np.ndarray:
        """(C, F) per-feature contributions (decision-path or TreeSHAP, see `explanations`); each row
        sums to its score minus a constant (the root values, or TreeSHAP's expected value)."""
        if not len(x):
            return np.zeros((0, len(FEATURE_NAMES)))
        if self.explanations == "treeshap":
            c = np.asarray(self.boosters[mode].predict(self._x(x, mode), pred_contrib=True, num_threads=1), np.float64)
        else:
            c = self.paths[mode].contributions(self._x(x, mode))
        cols = self.columns.get(mode)
        if cols is None:
            return c[:, : len(FEATURE_NAMES)]
        out = np.zeros((len(c), len(FEATURE_NAMES)))
        out[:, cols] = c[:, : len(cols)]
        return out

    def for_context(self, ctx: RankContext) -> "LearnedRanker":
        return self

    def describe(self, mode: str) -> str:
        return f"learned lambdarank {self.manifest.get('version', '')}".strip()

    def save(self, directory: str | Path) -> None:
        """Write <mode>/model.txt per mode to a folder (local or URI)."""
        with A.staged(str(directory)) as d:
            for mode, booster in self.boosters.items():
                (d / mode).mkdir(parents=True, exist_ok=True)
                booster.save_model(str(d / mode / MODEL_FILE))

    @classmethod
    def load(cls, directory: str | Path, manifest: dict | None = None, explanations: str = "treeshap") -> "LearnedRanker":
        """Load every mode's text model under `directory`; a model trained on fewer features (an
        older version) reads those; one that needs a feature this code does not compute is refused."""
        import lightgbm as lgb

        d = Path(A.local_copy(str(directory)))
        boosters = {}
        for mode in MODES:
            path = d / mode / MODEL_FILE
            if not path.exists():
                continue
            booster = lgb.Booster(model_file=str(path))
            names = tuple(booster.feature_name())
            unknown = [n for n in names if n not in FEATURE_NAMES]
            if unknown:
                raise ValueError(f"ranker model {path} was trained on features {unknown} this code does not compute "
                                 f"(it computes {list(FEATURE_NAMES)}); retrain it with jobs.train_ranker")
            boosters[mode] = booster
        if not boosters:
            raise FileNotFoundError(f"no ranker model under {d} (expected {'/'.join(MODES)}/{MODEL_FILE})")
        if manifest is None and (d / "manifest.json").exists():
            manifest = json.loads((d / "manifest.json").read_text())
        return cls(boosters, manifest or {}, explanations)


def train_booster(x: np.ndarray, y: np.ndarray, groups: np.ndarray, params: RankerParams,
                  valid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                  extra_params: dict | None = None):
    """Train one lambdarank booster on grouped rows; `valid` (x, y, group ids) drives early stopping.

    extra_params: added to LightGBM's parameters (Ray Train passes the distributed network here).
    Returns (booster, {"best_iteration", "valid_ndcg@k"...})."""
    import lightgbm as lgb

    if len(x) != len(y) or len(x) != len(groups):
        raise ValueError(f"x, y and groups disagree: {len(x)}, {len(y)}, {len(groups)} rows")
    if x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"x has {x.shape[1]} columns; the ranker features are {len(FEATURE_NAMES)}")
    lgb_params = params.lgb_params() | (extra_params or {})
    train_set = lgb.Dataset(np.asarray(x, np.float64), label=np.asarray(y, np.float64),
                            group=group_sizes(groups), feature_name=list(FEATURE_NAMES), free_raw_data=False)
    sets, names, callbacks = [train_set], ["train"], []
    if valid is not None and len(valid[0]):
        vx, vy, vg = valid
        sets.append(lgb.Dataset(np.asarray(vx, np.float64), label=np.asarray(vy, np.float64), group=group_sizes(vg),
                                feature_name=list(FEATURE_NAMES), reference=train_set))
        names.append("valid")
        callbacks.append(lgb.early_stopping(params.early_stopping_rounds, verbose=False))
    evals: dict = {}
    callbacks.append(lgb.record_evaluation(evals))
    booster = lgb.train(lgb_params, train_set, num_boost_round=params.num_rounds, valid_sets=sets,
                        valid_names=names, callbacks=callbacks)
    info: dict = {"best_iteration": int(booster.best_iteration or booster.current_iteration())}
    for name, curves in evals.items():
        for metric, values in curves.items():
            it = info["best_iteration"] - 1
            info[f"{name}_{metric.replace('ndcg@', 'ndcg@')}"] = float(values[min(it, len(values) - 1)])
    return booster, info


def importances(booster) -> dict[str, dict[str, float]]:
    """Gain and split importances per feature, gain normalised to shares."""
    gain = np.asarray(booster.feature_importance("gain"), dtype=np.float64)
    split = np.asarray(booster.feature_importance("split"), dtype=np.float64)
    total = gain.sum() or 1.0
    return {name: {"gain_share": round(float(g / total), 4), "splits": int(s)}
            for name, g, s in zip(FEATURE_NAMES, gain, split)}


def params_dict(p: RankerParams) -> dict:
    return asdict(p)


def segment_of(ctx: RankContext) -> str:
    """The shopper segment of a request: "with_history" when the profile holds interactions (the
    candidates come from them), "without_history" for a guest (popular candidates only)."""
    return SEGMENTS[0] if ctx.history else SEGMENTS[1]


def shoppers(segments: tuple[str, ...] | list[str]) -> str:
    """"shoppers with history", "shoppers with history and without history": for messages."""
    return "shoppers " + " and ".join(segments).replace("_", " ")


def served_segments(metrics: dict) -> tuple[str, ...]:
    """The segments whose recommend requests a ranker version ranks, from its manifest metrics:
    those where it beat the hand-set weights on the valid lists of that segment's shoppers
    (jobs.train_ranker's `serves_learned_for`); a version recorded before segments: both when its
    overall verdict was not a loss, neither otherwise."""
    if "serves_learned_for" in metrics:
        unknown = [s for s in metrics["serves_learned_for"] if s not in SEGMENTS]
        if unknown:
            raise ValueError(f"serves_learned_for names {unknown}; allowed: {list(SEGMENTS)}")
        return tuple(s for s in SEGMENTS if s in metrics["serves_learned_for"])
    return () if metrics.get("learned_beats_hand_weights_on_valid") is False else SEGMENTS


class WithFallback:
    """The serving scorer: the learned model for the modes it was trained on, the hand-set
    weights for the others (and for everything when no model exists). For recommend requests the
    learned model ranks only the shopper segments in `segments` (see `served_segments`); the other
    segment's requests get the hand-set weights (`for_context`)."""

    def __init__(self, learned: LearnedRanker | None, hand, segments: tuple[str, ...] = SEGMENTS) -> None:
        unknown = [s for s in segments if s not in SEGMENTS]
        if unknown:
            raise ValueError(f"segments {unknown} unknown; allowed: {list(SEGMENTS)}")
        self.learned = learned
        self.hand = hand
        self.segments = tuple(segments)

    def _pick(self, mode: str):
        return self.learned if self.learned is not None and self.learned.has(mode) else self.hand

    def for_context(self, ctx: RankContext):
        picked = self._pick(ctx.mode)
        if picked is self.learned and ctx.mode == "recommend" and segment_of(ctx) not in self.segments:
            return self.hand
        return picked

    def score(self, x: np.ndarray, mode: str) -> np.ndarray:
        return self._pick(mode).score(x, mode)

    def contributions(self, x: np.ndarray, mode: str) -> np.ndarray:
        return self._pick(mode).contributions(x, mode)

    def describe(self, mode: str) -> str:
        picked = self._pick(mode)
        if picked is not self.learned or mode != "recommend" or self.segments == SEGMENTS:
            return picked.describe(mode)
        if not self.segments:
            return self.hand.describe(mode)
        other = [s for s in SEGMENTS if s not in self.segments]
        return f"{picked.describe(mode)} for {shoppers(self.segments)}; {self.hand.describe(mode)} for {shoppers(other)}"
