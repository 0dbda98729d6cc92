"""Offline evaluation without Ray: splits, requests, the methods compared, their metrics.

Protocol (recommendation, from a canonical event log):
- An *interaction* is a user's positive events (view, click, add_to_cart, purchase) at one
  timestamp: a basket when the log writes an order's lines with one timestamp (Online Retail).
- Split `time:<ISO>`: everything before the instant trains; each user's first interaction at or
  after it is that user's test request. The ranker learns from the `ranker_days` before the
  instant: each user's first `ranker_per_user` interactions in that window (each with its own
  context), with every stage it sees (features, co-occurrence, popularity) built from the events
  before the window.
- Split `leave-last`: each user's last interaction is the test request, the one before it the
  ranker's (validation) request; stages see each user's events before the respective request.
- A request's context is the user's events strictly before it (replayed into a profile exactly as
  serving folds them); its relevant items are the items of the interaction, minus the items the
  user bought before when `exclude_purchased` (serving's default: buyers are not shown what they
  bought). Every method excludes the same items. Requests left without a relevant item are dropped
  and counted.
- Every method ranks the FULL catalog (no sampled negatives) and returns its top L (L = max k).

Search relevance (a judgments file of query, item_id, grade) is in `search_*` below.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa

from features import artifacts as A
from features.validate import ValidationConfig, split_duplicates, validate_events, validate_items

from features import baselines as B
from features import metrics as M
from features import schema as S
from features.catalog import Catalog
from features.lexical import BM25
from features.profile import Profile, ProfileParams
from features.ranking import RankContext, Scorer, candidate_features, context_for, rank_candidates
from features.retrieval import LiveCatalog
from features.replay import profiles_at

SPLITS = ("time:<ISO 8601 instant>", "leave-last")


@dataclass(frozen=True)
class SplitSpec:
    kind: str  # "time" | "leave-last"
    at: dt.datetime | None = None

    @classmethod
    def parse(cls, text: str) -> "SplitSpec":
        t = (text or "").strip()
        if t == "leave-last":
            return cls("leave-last")
        if t.startswith("time:"):
            raw = t[5:].strip()
            try:
                at = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"split: {raw!r} after 'time:' is not an ISO 8601 instant "
                                 f"(e.g. time:2011-11-09T00:00:00Z)") from None
            return cls("time", at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc))
        raise ValueError(f"split: {text!r}; allowed: {', '.join(SPLITS)}")


def interactions(events: pl.DataFrame) -> pl.DataFrame:
    """(user_id, ts, items, first_event_ids) per user and timestamp: the distinct item ids in
    (ts, event_id) order (the order profiles fold them) and the first event id of each."""
    pos = events.filter(pl.col(S.EVENT_TYPE).is_in(list(S.POSITIVE_EVENT_TYPES)) & pl.col(S.ITEM_ID).is_not_null())
    firsts = (pos.sort([S.USER_ID, S.TS, S.EVENT_ID])
              .group_by([S.USER_ID, S.TS, S.ITEM_ID], maintain_order=True).agg(pl.col(S.EVENT_ID).first()))
    return (firsts.group_by([S.USER_ID, S.TS], maintain_order=True)
            .agg(pl.col(S.ITEM_ID).alias("items"), pl.col(S.EVENT_ID).alias("first_event_ids")))


def in_session(requests: pl.DataFrame, reveal: float = 0.5) -> pl.DataFrame:
    """The in-session variant of interaction requests: the first `reveal` share of each
    interaction's items (at least one) join the context, as if the shopper had just added them;
    the rest are the targets. Interactions with a single item are left out. Adds `cut_event_id`:
    the context is every event before (ts, cut_event_id) in fold order."""
    if not 0 < reveal < 1:
        raise ValueError(f"in_session.reveal must be in (0, 1), got {reveal}")
    rows = []
    for user, ts, items, eids in requests.select(S.USER_ID, S.TS, "items", "first_event_ids").iter_rows():
        if len(items) < 2:
            continue
        k = min(max(1, int(len(items) * reveal)), len(items) - 1)
        rows.append((user, ts, items[k:], eids[k:], eids[k], items[:k]))
    schema = {S.USER_ID: pl.String, S.TS: requests.schema[S.TS], "items": pl.List(pl.String),
              "first_event_ids": pl.List(pl.String), "cut_event_id": pl.String, "revealed": pl.List(pl.String)}
    return pl.DataFrame(rows, schema=schema, orient="row")


@dataclass
class SplitPlan:
    """Everything the evaluation trains and scores, cut so no stage sees what it is scored on."""

    spec: SplitSpec
    train_events: pl.DataFrame  # what the test requests' stages are trained on
    ranker_events: pl.DataFrame  # what the ranker's requests' stages are trained on (a prefix of train)
    test_requests: pl.DataFrame  # user_id, ts, items
    ranker_requests: pl.DataFrame
    train_until: dt.datetime  # newest instant any stage of the test requests saw
    ranker_until: dt.datetime


def _before(events: pl.DataFrame, cut: pl.DataFrame) -> pl.DataFrame:
    """Each user's events strictly before that user's cut ts (users without a cut keep all)."""
    j = events.join(cut.select(S.USER_ID, pl.col(S.TS).alias("__cut")), on=S.USER_ID, how="left")
    return j.filter(pl.col("__cut").is_null() | (pl.col(S.TS) < pl.col("__cut"))).drop("__cut")


def first_per_user(inter: pl.DataFrame, k: int = 1) -> pl.DataFrame:
    """Each user's first k interactions (in time order)."""
    if k < 1:
        raise ValueError(f"ranker_requests_per_user must be >= 1, got {k}")
    return inter.sort([S.USER_ID, S.TS]).group_by(S.USER_ID, maintain_order=True).head(k)


def plan_split(events: pl.DataFrame, spec: SplitSpec, ranker_days: float = 30.0,
               ranker_per_user: int = 1) -> SplitPlan:
    inter = interactions(events)
    if inter.is_empty():
        raise ValueError("events: no positive interactions (view, click, add_to_cart, purchase) to evaluate")
    if spec.kind == "time":
        at = spec.at
        lo, hi = inter[S.TS].min(), inter[S.TS].max()
        if not lo < at <= hi:
            raise ValueError(f"split: time:{at.isoformat()} must fall after the first and at or before the last "
                             f"interaction ({lo.isoformat()} .. {hi.isoformat()})")
        rv = at - dt.timedelta(days=ranker_days)
        test = inter.filter(pl.col(S.TS) >= at).group_by(S.USER_ID, maintain_order=True).first()
        ranker = first_per_user(inter.filter((pl.col(S.TS) >= rv) & (pl.col(S.TS) < at)), ranker_per_user)
        train = events.filter(pl.col(S.TS) < at)
        ranker_ev = events.filter(pl.col(S.TS) < rv)
        return SplitPlan(spec, train, ranker_ev, test, ranker, at, rv)
    # leave-last: per user, last interaction = test, the one before = ranker/validation
    ranked = inter.with_columns(pl.int_range(pl.len()).reverse().over(S.USER_ID).alias("__from_end"))
    test = ranked.filter(pl.col("__from_end") == 0).drop("__from_end")
    ranker = ranked.filter(pl.col("__from_end") == 1).drop("__from_end")
    train = _before(events, test)
    ranker_ev = _before(train, ranker.select(S.USER_ID, S.TS).vstack(
        test.join(ranker, on=S.USER_ID, how="anti").select(S.USER_ID, S.TS)))
    return SplitPlan(spec, train, ranker_ev, test, ranker, train[S.TS].max(), ranker_ev[S.TS].max())


def read_inputs(events_path: str, items_path: str, vcfg: ValidationConfig | None = None
                ) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Canonical events and items, validated exactly as the feature job does: rows that fail are
    left out and counted (the feature job's quarantine holds them), duplicate event ids keep one."""
    vcfg = vcfg or ValidationConfig()
    items, items_bad = validate_items(_read(items_path), vcfg)
    if items.is_empty():
        raise ValueError(f"items {items_path}: no valid item rows")
    raw = _read(events_path)
    ok, bad = validate_events(raw, items.get_column(S.ITEM_ID), vcfg)
    ok, dups = split_duplicates(ok)
    counts = {"events_in": raw.num_rows, "events_valid": ok.height, "events_left_out": bad.height + dups.height,
              "items_valid": items.height, "items_left_out": items_bad.height}
    if ok.is_empty():
        raise ValueError(f"events {events_path}: no valid events")
    return ok, items, counts


def _read(path: str) -> pa.Table:
    import pyarrow.parquet as pq

    files = A.list_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no Parquet file there")
    return pa.concat_tables([pq.read_table(fs.open_input_file(p)) for fs, p in files], promote_options="permissive")


def with_in_session(requests: pl.DataFrame, reveal: float = 0.5) -> pl.DataFrame:
    """The requests followed by their in-session variants (see `in_session`)."""
    base = requests.with_columns(pl.lit(None, pl.String).alias("cut_event_id"),
                                 pl.lit(None, pl.List(pl.String)).alias("revealed"))
    return pl.concat([base, in_session(requests, reveal)], how="diagonal_relaxed")


# --- requests ----------------------------------------------------------------------------------
@dataclass
class Requests:
    """Scored requests: who, when, what counts as relevant, what every method must exclude."""

    users: list[str]
    ts: np.ndarray  # epoch seconds
    relevant: list[set[str]]
    exclude: list[frozenset[str]]
    cut_event_ids: list[str | None] = field(default_factory=list)  # in-session: context ends before this event
    revealed: list[list[str]] = field(default_factory=list)  # in-session: the items already in the basket
    profiles: list[Profile | None] = field(default_factory=list)
    dropped: int = 0  # requests without a relevant item after exclusions

    def __len__(self) -> int:
        return len(self.users)


def build_requests(events: pl.DataFrame, requests: pl.DataFrame, exclude_purchased: bool = True,
                   max_requests: int = 0, seed: int = 0) -> Requests:
    """Relevant and excluded items of each request (see the module doc); `events` must hold at
    least every event before each request (the context). max_requests > 0: a seeded sample."""
    req = requests
    if max_requests and req.height > max_requests:
        req = req.sample(max_requests, seed=seed).sort([S.TS, S.USER_ID])
    bought = (events.filter(pl.col(S.EVENT_TYPE) == S.EventType.PURCHASE.value)
              .join(req.select(S.USER_ID, pl.col(S.TS).alias("__rt")), on=S.USER_ID)
              .filter(pl.col(S.TS) < pl.col("__rt"))
              .group_by(S.USER_ID, "__rt").agg(pl.col(S.ITEM_ID).unique().alias("__bought")))
    req = req.join(bought, left_on=[S.USER_ID, S.TS], right_on=[S.USER_ID, "__rt"], how="left")
    if "cut_event_id" not in req.columns:
        req = req.with_columns(pl.lit(None, pl.String).alias("cut_event_id"), pl.lit(None, pl.List(pl.String)).alias("revealed"))
    users, ts, relevant, exclude, cuts, shown = [], [], [], [], [], []
    dropped = 0
    for user, t, items, b, cut, revealed in req.select(S.USER_ID, S.TS, "items", "__bought", "cut_event_id",
                                                       "revealed").iter_rows():
        # Items revealed in the session are in the context (and, as purchases, excluded by serving).
        ex = frozenset((b or []) + (revealed or [])) if exclude_purchased else frozenset(revealed or [])
        rel = {i for i in items if i not in ex}
        if not rel:
            dropped += 1
            continue
        users.append(user)
        ts.append(t.timestamp())
        relevant.append(rel)
        exclude.append(ex)
        cuts.append(cut)
        shown.append(list(revealed or []))
    return Requests(users, np.array(ts, dtype=np.float64), relevant, exclude, cuts, shown, dropped=dropped)


def attach_profiles(reqs: Requests, events: pl.DataFrame, catalog: Catalog, params: ProfileParams) -> list[Profile | None]:
    """The profile of each request's user just before it, folded with `catalog`'s vectors."""
    frame = pl.DataFrame({S.USER_ID: reqs.users,
                          S.TS: pl.Series([dt.datetime.fromtimestamp(t, dt.timezone.utc) for t in reqs.ts])
                          .cast(pl.Datetime("us", "UTC")),
                          "cut_event_id": pl.Series(reqs.cut_event_ids or [None] * len(reqs), dtype=pl.String)})
    return profiles_at(events, frame, catalog.lookup, params)


# --- methods ------------------------------------------------------------------------------------
@dataclass
class MethodResult:
    name: str
    lists: np.ndarray  # (Q, L) catalog rows
    latency_ms: np.ndarray  # (Q,) per-request scoring time, in process
    note: str = ""


def _timed(name: str, n: int, L: int, fn: Callable[[int], list[int]], note: str = "") -> MethodResult:
    lists = np.full((n, L), -1, dtype=np.int64)
    lat = np.zeros(n)
    for q in range(n):
        t0 = time.perf_counter()
        rows = fn(q)[:L]
        lat[q] = (time.perf_counter() - t0) * 1e3
        lists[q, : len(rows)] = rows
    return MethodResult(name, lists, lat, note)


def _top_excluding(scores: np.ndarray, L: int, ex_rows: np.ndarray) -> list[int]:
    s = np.asarray(scores, dtype=np.float64).copy()
    if len(ex_rows):
        s[ex_rows] = -np.inf
    top = np.argpartition(-s, min(L, len(s) - 1))[:L] if len(s) > L else np.arange(len(s))
    top = top[np.argsort(-s[top], kind="stable")]
    return [int(r) for r in top if np.isfinite(s[r])]


def exclude_rows(reqs: Requests, catalog: Catalog) -> list[np.ndarray]:
    return [catalog.rows(sorted(ex)) for ex in reqs.exclude]


def popularity_method(name: str, scores: np.ndarray, reqs: Requests, catalog: Catalog, L: int) -> MethodResult:
    ex = exclude_rows(reqs, catalog)
    return _timed(name, len(reqs), L, lambda q: _top_excluding(scores, L, ex[q]))


def cooccurrence_method(reqs: Requests, catalog: Catalog, fallback: np.ndarray, L: int) -> MethodResult:
    ex = exclude_rows(reqs, catalog)

    def one(q: int) -> list[int]:
        prof = reqs.profiles[q]
        hist = [i for i, _, _ in prof.recent_items] if prof is not None else []
        out = B.cooccurrence_lists(catalog.cooc, [hist], catalog.row, fallback, L, [set(ex[q].tolist())])
        return [int(r) for r in out[0] if r >= 0]

    return _timed("co-occurrence", len(reqs), L, one)


def embedding_method(name: str, reqs: Requests, catalog: Catalog, params: ProfileParams, fallback: np.ndarray,
                     L: int) -> MethodResult:
    """The user vector of the replayed profile (serving's formula) against every item vector;
    users without a vector get `fallback` (popularity), as serving's cold start does."""
    ex = exclude_rows(reqs, catalog)
    vecs = catalog.vectors

    def one(q: int) -> list[int]:
        prof = reqs.profiles[q]
        u = prof.user_vector(float(reqs.ts[q]), params)[0] if prof is not None else None
        return _top_excluding(fallback if u is None else vecs @ u, L, ex[q])

    return _timed(name, len(reqs), L, one, note="popularity for users without a vector")


def system_method(name: str, reqs: Requests, live: LiveCatalog, params: ProfileParams, scorer: Scorer,
                  L: int) -> MethodResult:
    """Serving's recommend path, function for function: the profile's context, LiveCatalog.recommend
    candidates, rank_candidates (features, scorer, reasons) -> top L."""
    cat = live.catalog

    def one(q: int) -> list[int]:
        ctx = context_for("recommend", reqs.profiles[q], float(reqs.ts[q]), params)
        ids = live.recommend(ctx.user_vector(), [i for i, _ in ctx.recent_items], None, None, reqs.exclude[q])
        return [r.row for r in rank_candidates(ctx, ids, cat, scorer, L)]

    return _timed(name, len(reqs), L, one)


def candidate_lists(reqs: Requests, live: LiveCatalog, params: ProfileParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The ranker's training rows: for each request, serving's recommend candidates with their
    features and label 1 for a relevant item. Returns (X, y, group ids, stats incl. candidate recall)."""
    xs, ys, gs = [], [], []
    found = 0
    for q in range(len(reqs)):
        ctx = context_for("recommend", reqs.profiles[q], float(reqs.ts[q]), params)
        ids = live.recommend(ctx.user_vector(), [i for i, _ in ctx.recent_items], None, None, reqs.exclude[q])
        rows = live.catalog.rows(ids)
        y = np.array([live.catalog.item_ids[r] in reqs.relevant[q] for r in rows], dtype=np.float64)
        found += int(y.sum() > 0)
        xs.append(candidate_features(ctx, rows, live.catalog))
        ys.append(y)
        gs.append(np.full(len(rows), q, dtype=np.int64))
    x = np.concatenate(xs) if xs else np.zeros((0, 0), np.float32)
    stats = {"requests": len(reqs), "rows": int(sum(len(y) for y in ys)),
             "requests_with_a_relevant_candidate": found,
             "candidate_hit_rate": found / len(reqs) if len(reqs) else 0.0}
    return x, (np.concatenate(ys) if ys else np.zeros(0)), (np.concatenate(gs) if gs else np.zeros(0, np.int64)), stats


# --- metrics of a method ------------------------------------------------------------------------
def score_method(res: MethodResult, reqs: Requests, catalog: Catalog, ks: tuple[int, ...],
                 item_share: np.ndarray, n_users: int) -> dict:
    # An item outside the catalog must still count in |relevant|: give each its own negative id.
    relevant = [{r if r >= 0 else -2 - j for j, r in enumerate(rel_rows)} for rel_rows in
                ([catalog.row.get(i, -1) for i in rel] for rel in reqs.relevant)]
    out: dict = {"method": res.name, "requests": len(reqs)}
    out |= {k: round(v, 6) for k, v in M.list_metrics(res.lists, relevant, ks).items() if k != "count"}
    for k in ks:
        out |= {key: round(v, 6) for key, v in M.set_metrics_at_k(res.lists, relevant, k).items()
                if not key.startswith("recall@")}  # recall@k is list_metrics' (capped at k)
        out[f"coverage@{k}"] = round(M.catalog_coverage(res.lists, len(catalog), k), 6)
    k0 = ks[0]
    out[f"diversity@{k0}"] = round(M.intra_list_diversity(res.lists, catalog.vectors, k0), 6)
    out[f"novelty@{k0}"] = round(M.novelty(res.lists, item_share, k0, n_users), 6)
    lat = res.latency_ms
    out["latency_ms"] = {"p50": _pct(lat, 50), "p95": _pct(lat, 95), "p99": _pct(lat, 99), "mean": round(float(lat.mean()), 3) if len(lat) else 0.0}
    if res.note:
        out["note"] = res.note
    return out


def _pct(a: np.ndarray, q: float) -> float:
    return round(float(np.percentile(a, q)), 3) if len(a) else 0.0


def item_shares(events: pl.DataFrame, catalog: Catalog) -> tuple[np.ndarray, int]:
    """(share of users who interacted with each item, number of users) from training events."""
    pos = events.filter(pl.col(S.EVENT_TYPE).is_in(list(S.POSITIVE_EVENT_TYPES)) & pl.col(S.ITEM_ID).is_not_null())
    n_users = max(pos[S.USER_ID].n_unique(), 1)
    per = pos.group_by(S.ITEM_ID).agg(pl.col(S.USER_ID).n_unique().alias("u"))
    share = np.zeros(len(catalog))
    for item, u in per.iter_rows():
        r = catalog.row.get(item)
        if r is not None:
            share[r] = u / n_users
    return share, n_users


# --- search relevance (judgments) ---------------------------------------------------------------
@dataclass
class Judgments:
    queries: list[str]
    items: list[list[int]]  # judged catalog rows per query
    grades: list[np.ndarray]

    @classmethod
    def from_frame(cls, df: pl.DataFrame, catalog: Catalog) -> "Judgments":
        for col in ("query", S.ITEM_ID, "grade"):
            if col not in df.columns:
                raise ValueError(f"judgments: missing column '{col}'; required: query, item_id, grade")
        unknown = df.filter(~pl.col(S.ITEM_ID).is_in(list(catalog.row)))
        if unknown.height:
            raise ValueError(f"judgments: {unknown.height} rows name items not in the catalog, "
                             f"e.g. item_id={unknown[S.ITEM_ID][0]!r}")
        qs, items, grades = [], [], []
        for (q,), g in df.group_by("query", maintain_order=True):
            qs.append(str(q))
            items.append([catalog.row[i] for i in g[S.ITEM_ID].to_list()])
            grades.append(g["grade"].cast(pl.Float64).to_numpy())
        return cls(qs, items, grades)


def query_folds(n_queries: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number of each query (cross-validation by query: a query's judgments never train the
    model that is scored on it)."""
    if folds < 2:
        raise ValueError(f"search.folds must be >= 2, got {folds}")
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n_queries) % folds)


def search_context(query: str, q_emb: np.ndarray) -> RankContext:
    return RankContext(mode="search", query=query, query_emb=q_emb)


def judged_features(j: Judgments, q: int, q_emb: np.ndarray, catalog: Catalog, bm25: BM25) -> np.ndarray:
    """Features of the judged items of query q (see `query_features`)."""
    return query_features(j.queries[q], q_emb, np.asarray(j.items[q], dtype=np.int64), catalog, bm25)


def query_features(query: str, q_emb: np.ndarray, rows: np.ndarray, catalog: Catalog, bm25: BM25) -> np.ndarray:
    """Search features of any item set, scaled by the catalog-wide best BM25 and cosine of the
    query: what serving's candidates (always holding the top hits of both) are scaled by."""
    raw = bm25.scores(query, len(catalog))
    return candidate_features(search_context(query, q_emb), rows, catalog, raw[rows], bm25_max=float(raw.max()),
                              query_sim_max=float((catalog.vectors @ q_emb).max()))
