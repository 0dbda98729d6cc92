"""Build user/item features, co-occurrence and encoder training examples on Ray Data.

    python -m jobs.build_features [--config jobs/configs/build_features.yaml] [--set key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.build_features ...

Steps: check every input file's schema -> validate rows (map_batches) -> find duplicate event ids
-> partition by user (hash shuffle) -> per-user-block polars transforms -> combine item partials
and co-occurrence by key -> write artifacts/features/<version>/ with manifest.json last.
The transforms are features/; this file only moves data through Ray.
"""

from __future__ import annotations

import datetime as dt
import secrets
import sys
import time
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from features import artifacts as A
from features.config import to_dict
from features.data import als as ALS
from features.data import cooccurrence as CO
from features.data import ease as E
from features.data import schema as S
from features.data import transforms as T
from features.data.pipeline import SplitConfig, catalog_columns, parse_instant, resolve_cutoffs, user_block_outputs
from features.data.validate import (
    SchemaError,
    ValidationConfig,
    check_schema,
    split_duplicates,
    validate_events,
    validate_items,
)
from features.profiles.profile import ProfileParams
from features.profiles.seed import with_seeds
from jobs.common import (
    RayConfig,
    Steps,
    cached_get,
    init_ray,
    load_job_config,
    parse_args,
    partition_by_key,
    run_job,
    to_polars,
)

KIND = "features"


@dataclass(frozen=True)
class BuildFeaturesConfig:
    events: str = "data/canonical/online_retail/events.parquet"
    items: str = "data/canonical/online_retail/items.parquet"
    output_root: str = "artifacts"
    as_of: str | None = None  # ISO 8601, or latest-<days>d (e.g. latest-30d); default: the newest valid event
    num_partitions: int = 0  # user/item shuffle partitions; 0 = 2 per CPU, at least 1 per 2M events
    ray: RayConfig = field(default_factory=RayConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    features: T.FeatureParams = field(default_factory=T.FeatureParams)
    split: SplitConfig = field(default_factory=SplitConfig)
    profiles: ProfileParams = field(default_factory=ProfileParams)  # the seed profiles' fold; as serving's profiles.params


# --- batch functions (run on Ray workers) ------------------------------------------------------
def _arrow(df: pl.DataFrame) -> pa.Table:
    return df.to_arrow(compat_level=pl.CompatLevel.oldest())


def _validate_batch(batch: pa.Table, item_ids_ref, vcfg: ValidationConfig, now: dt.datetime) -> pa.Table:
    ok, bad = validate_events(batch, cached_get(item_ids_ref), vcfg, now=now)
    ok = ok.with_columns(pl.lit(None, pl.String).alias(S.REASON), pl.lit(None, pl.String).alias(S.RAW))
    return _arrow(pl.concat([ok, bad], how="vertical_relaxed"))


def _keep(batch: pa.Table, bad: bool) -> pa.Table:
    df = pl.from_arrow(batch)
    is_bad = pl.col(S.REASON).is_not_null()
    df = df.filter(is_bad if bad else ~is_bad)
    return _arrow(df if bad else df.drop(S.REASON, S.RAW))


def _member(batch: pa.Table, ids_ref, inside: bool) -> pa.Table:
    df = pl.from_arrow(batch)
    hit = pl.col(S.EVENT_ID).is_in(cached_get(ids_ref).implode())
    return _arrow(df.filter(hit if inside else ~hit))


def _user_block(batch: pa.Table, catalog_ref, p, as_of, cutoffs, out_dir: str, profiles: ProfileParams):
    """Everything computed per user-partitioned block, in one pass over its events.

    Users (each with the seed profile serving starts from, features/profiles/seed.py) and
    examples are final per block, so the worker writes them straight to
    out_dir (one file per block and split). Item and pair partials still need a combine across
    blocks; they travel on as Arrow IPC rows, with row counts for the summary.
    """
    events, catalog = pl.from_arrow(batch), cached_get(catalog_ref)
    outputs = user_block_outputs(events, catalog, p, as_of, cutoffs)
    part = secrets.token_hex(8)
    users, examples = with_seeds(outputs.pop("users"), events, catalog, profiles, as_of), outputs.pop("examples")
    _write_local(users, out_dir, f"users/part-{part}.parquet")
    for split in S.Split:
        _write_local(examples.filter(pl.col(S.SPLIT) == split.value), out_dir,
                     f"examples/{split.value}/part-{part}.parquet")
    outputs["example_counts"] = examples.group_by(S.SPLIT, S.EXAMPLE_KIND).len().cast({"len": pl.Int64})
    outputs["user_counts"] = pl.DataFrame({"users": [users.height]}, schema={"users": pl.Int64})
    names, blobs = [], []
    for name, df in outputs.items():
        sink = pa.BufferOutputStream()
        table = _arrow(df)
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        names.append(name)
        blobs.append(sink.getvalue().to_pybytes())
    return pa.table({_OUT: names, _IPC: pa.array(blobs, pa.large_binary())})


_OUT, _IPC = "__output", "__ipc"


def _decode(batch: pa.Table, name: str) -> pa.Table:
    # Not a generator on purpose: Ray 2.60's hash shuffle cannot concatenate the schema-less
    # empty blocks that generator UDFs may emit. Every fused block holds every output once.
    tables = [pa.ipc.open_stream(b.as_py()).read_all()
              for out, b in zip(batch.column(_OUT).to_pylist(), batch.column(_IPC)) if out == name]
    return pa.concat_tables(tables, promote_options="default")


def _output(fused: "ray.data.Dataset", name: str) -> "ray.data.Dataset":
    return fused.map_batches(_decode, batch_size=None, batch_format="pyarrow", fn_kwargs=dict(name=name))


def _cooc_top(batch, sessions_ref, p):
    sessions, codes = cached_get(sessions_ref)
    return _arrow(CO.cooccurrence_top(pl.from_arrow(batch), sessions, codes, p))


def _counts(batch: pa.Table, cols: list[str]) -> pa.Table:
    return _arrow(pl.from_arrow(batch).group_by(cols).len())


# --- driver ------------------------------------------------------------------------------------
def check_inputs(path: str, contract: pa.Schema, required: tuple[str, ...], what: str) -> list[str]:
    """Schema-check every file before any work; returns ignored extra columns."""
    extras: set[str] = set()
    first: tuple[str, pa.Schema] | None = None
    for fs, p in A.list_files(path):
        try:
            found = pq.read_schema(fs.open_input_file(p))
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise SchemaError(f"{what} file {p}: not a readable Parquet file ({type(e).__name__}: {e}); the canonical "
                              "tables are Parquet: import a CSV, JSON-lines or other export through a mapping first "
                              "(make mapping EVENTS=... writes one to start from; then make run MAPPING=...; docs/data.md)") from None
        extras |= set(check_schema(found, contract, required, f"{what} file {p}"))
        # Ray Data reads a directory as one dataset and cannot merge a column typed differently
        # in two files; say which files and column instead of failing deep inside the read.
        if first is None:
            first = (p, found)
        for name in contract.names:
            if name in found.names and name in first[1].names and found.field(name).type != first[1].field(name).type:
                raise SchemaError(
                    f"{what}: column '{name}' is {first[1].field(name).type} in {first[0]} but "
                    f"{found.field(name).type} in {p}; all files of one input must use the same type per column")
    return sorted(extras)


def _read_table(path: str) -> pa.Table:
    tables = []
    for fs, p in A.list_files(path):
        tables.append(pq.read_table(fs.open_input_file(p)))
    return pa.concat_tables(tables, promote_options="permissive")


def _write(ds: "ray.data.Dataset", out_dir: str, name: str) -> str:
    fs, inner = A.resolve(A.join(out_dir, name))
    ds.write_parquet(inner, filesystem=fs)
    return A.join(out_dir, name)


def _write_local(df: pl.DataFrame, out_dir: str, name: str) -> str:
    fs, inner = A.resolve(A.join(out_dir, name))
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as f:
        pq.write_table(_arrow(df), f)
    return A.join(out_dir, name)


def run(cfg: BuildFeaturesConfig) -> dict:
    """Run the feature build on the current Ray cluster; returns the manifest."""
    t0 = time.perf_counter()
    step = Steps("build_features")
    vcfg, p = cfg.validation, cfg.features
    now = vcfg.now_utc()
    step("check input schemas")
    extras = check_inputs(cfg.events, S.EVENTS_SCHEMA, S.EVENTS_REQUIRED, "events")
    extras_items = check_inputs(cfg.items, S.ITEMS_SCHEMA, S.ITEMS_REQUIRED, "items")
    for what, cols in (("events", extras), ("items", extras_items)):
        if cols:
            print(f"note: {what} columns not in the contract are ignored: {', '.join(cols)}", flush=True)

    step("validate catalog")
    items_raw = _read_table(cfg.items)
    items, items_bad = validate_items(items_raw, vcfg)
    if items.is_empty():
        raise ValueError(f"items {cfg.items}: no valid item rows (quarantine reasons: {_reasons(items_bad)})")
    catalog = catalog_columns(items)
    item_ids_ref = ray.put(items.get_column(S.ITEM_ID))
    catalog_ref = ray.put(catalog)

    step("read + validate events (Ray Data map_batches)")
    fs, inner = A.resolve(cfg.events)
    n_files = len(A.list_files(cfg.events))
    raw = ray.data.read_parquet(inner, filesystem=fs, override_num_blocks=max(n_files, 2 * _cluster_cpus()))
    validated = raw.map_batches(
        _validate_batch, batch_format="pyarrow", fn_kwargs=dict(item_ids_ref=item_ids_ref, vcfg=vcfg, now=now)
    ).materialize()
    ok = validated.map_batches(_keep, batch_format="pyarrow", fn_kwargs=dict(bad=False))
    bad_rows = validated.map_batches(_keep, batch_format="pyarrow", fn_kwargs=dict(bad=True))

    step("find duplicate event ids")
    # Duplicate ids are a global property: collect (id, ts) to the driver (~20 bytes per event).
    keys = to_polars(ok.select_columns([S.EVENT_ID, S.TS]))
    n_in = validated.count()
    if keys.is_empty():
        bad = to_polars(bad_rows.select_columns([S.REASON, S.ITEM_ID]))
        hint = ""
        if S.Reason.UNKNOWN_ITEM.value in set(bad.get_column(S.REASON).to_list()):
            seen = bad.filter(pl.col(S.REASON) == S.Reason.UNKNOWN_ITEM.value).get_column(S.ITEM_ID)[0]
            hint = (f"; the events' item_id values match none of the catalog's (an event names {seen!r}, the catalog "
                    f"has e.g. {items.get_column(S.ITEM_ID)[0]!r}): are both files from the same shop and id scheme?")
        raise ValueError(f"events {cfg.events}: no valid events left after validation (quarantine reasons: "
                         f"{_reasons(bad)}){hint}")
    dup_ids = keys.filter(pl.col(S.EVENT_ID).is_duplicated()).get_column(S.EVENT_ID).unique()
    dup_quarantine = None
    if len(dup_ids):
        dup_ref = ray.put(dup_ids)
        contested = to_polars(ok.map_batches(_member, batch_format="pyarrow", fn_kwargs=dict(ids_ref=dup_ref, inside=True)))
        kept, dup_quarantine = split_duplicates(contested)
        ok = ok.map_batches(_member, batch_format="pyarrow", fn_kwargs=dict(ids_ref=dup_ref, inside=False)).union(
            ray.data.from_arrow(_arrow(kept))
        )
    max_ts = keys.get_column(S.TS).max()
    as_of = _as_of(cfg.as_of, max_ts)
    cutoffs = resolve_cutoffs(cfg.split, min(max_ts, as_of))
    n_valid = keys.height - (0 if dup_quarantine is None else dup_quarantine.height)
    num_partitions = cfg.num_partitions or max(2 * _cluster_cpus(), -(-n_valid // 2_000_000))

    version = A.new_version()
    out_dir = A.join(cfg.output_root, KIND, version)
    outputs: dict[str, str] = {"users": A.join(out_dir, "users")}
    outputs.update({f"examples_{s.value}": A.join(out_dir, "examples", s.value) for s in S.Split})

    step(f"partition events by user into {num_partitions} blocks; users, examples, partials per block")
    fused = partition_by_key(ok, S.USER_ID, num_partitions).map_batches(
        _user_block, batch_size=None, batch_format="pyarrow",
        fn_kwargs=dict(catalog_ref=catalog_ref, p=p, as_of=as_of, cutoffs=cutoffs, out_dir=out_dir,
                       profiles=cfg.profiles),
    ).materialize()
    n_users = int(to_polars(_output(fused, "user_counts")).get_column("users").sum())
    counts = to_polars(_output(fused, "example_counts"))

    step("item features (combine partials by item)")
    # Partials are at most num_partitions x catalog rows (map-side combined per user block), so
    # the final combine runs in the driver, which holds the catalog anyway.
    combined = T.combine_item_partials(to_polars(_output(fused, "item_partials")))
    item_feats = T.item_features(combined, items, p)
    outputs["items"] = _write_local(item_feats, out_dir, "items/items.parquet")

    step("co-occurrence (combine pair partials by item)")
    codes = CO.item_codes(items.get_column(S.ITEM_ID))
    sessions_ref = ray.put((item_feats.select(S.ITEM_ID, S.N_SESSIONS), codes))
    cooc = partition_by_key(_output(fused, "cooc_partials"), S.ITEM_A, num_partitions).map_batches(
        _cooc_top, batch_size=None, batch_format="pyarrow", fn_kwargs=dict(sessions_ref=sessions_ref, p=p)
    ).materialize()
    outputs["cooccurrence"] = _write(cooc, out_dir, "cooccurrence")

    step("EASE item-to-item weights (distinct shopper-item pairs; one dense fit in the driver)")
    # Pairs are ~12 bytes each after the per-block distinct; the fit is one N x N inverse per
    # lambda tried (features.ease_max_items bounds N), which a single process does best.
    pairs = to_polars(_output(fused, "ease_pairs"))
    ease, ease_info = E.ease_table(pairs, p)
    if ease is not None:
        outputs["ease"] = _write_local(ease, out_dir, "ease/ease.parquet")
        print(f"  EASE: {ease_info['items']:,} items, lambda {ease_info['lambda']:.4g} "
              f"({ease_info['lambda_chosen_by']}), {ease.height:,} neighbour pairs", flush=True)

    step("ALS item factors (the same pairs; implicit's ALS in the driver)")
    als, als_info = ALS.als_table(pairs, p, seed=0, threads=cfg.ray.num_cpus)
    if als is not None:
        outputs["als"] = _write_local(als, out_dir, "als/als.parquet")
        print(f"  ALS: {als_info['items']:,} items x {als_info['factors']} factors, "
              f"{als_info['users']:,} shoppers", flush=True)
    example_counts = (
        counts.group_by(S.SPLIT, S.EXAMPLE_KIND).agg(pl.col("len").sum()).sort(S.SPLIT, S.EXAMPLE_KIND)
        if counts.height else counts
    )

    step("quarantine + manifest")
    quarantine = bad_rows
    if dup_quarantine is not None and dup_quarantine.height:
        quarantine = quarantine.union(ray.data.from_arrow(_arrow(dup_quarantine)))
    quarantine = quarantine.materialize()
    q_counts = to_polars(quarantine.map_batches(_counts, batch_format="pyarrow", fn_kwargs=dict(cols=[S.REASON])))
    event_reasons = _reason_dict(q_counts)
    if quarantine.count():
        outputs["quarantine_events"] = _write(quarantine, out_dir, "quarantine/events")
    if items_bad.height:
        outputs["quarantine_items"] = _write_local(items_bad, out_dir, "quarantine/items.parquet")

    metrics = {
        "events_in": n_in,
        "events_valid": n_valid,
        "events_quarantined": sum(event_reasons.values()),
        "events_quarantined_by_reason": event_reasons,
        "items_in": items_raw.num_rows,
        "items_valid": items.height,
        "items_quarantined_by_reason": _reasons(items_bad),
        "users": n_users,
        "cooccurrence_pairs": cooc.count(),
        "ease": ease_info,
        "als": als_info,
        "examples": {f"{s}/{k}": int(n) for s, k, n in example_counts.iter_rows()},
        "as_of": as_of.isoformat(),
        "valid_start": cutoffs.valid_start.isoformat(),
        "test_start": cutoffs.test_start.isoformat(),
        "num_partitions": num_partitions,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if metrics["events_in"] != metrics["events_valid"] + metrics["events_quarantined"]:
        raise AssertionError(f"row accounting broken: {metrics}")  # a bug, never bad input
    manifest = A.manifest(
        KIND, version, to_dict(cfg),
        inputs={"events": A.fingerprint(cfg.events), "items": A.fingerprint(cfg.items)},
        outputs=outputs, metrics=metrics,
    )
    A.write_manifest(out_dir, manifest)
    step("done")
    manifest["path"] = out_dir
    return manifest


def _as_of(text: str | None, max_ts: dt.datetime) -> dt.datetime:
    """as_of: null (the newest event), an ISO instant, or latest-<days>d relative to the newest event."""
    if text is not None and str(text).startswith("latest-"):
        raw = str(text)[len("latest-"):]
        try:
            days = float(raw.removesuffix("d"))
        except ValueError:
            raise ValueError(f"as_of: {text!r}; allowed: null, an ISO 8601 instant, or latest-<days>d "
                             "(e.g. latest-30d)") from None
        return max_ts - dt.timedelta(days=days)
    return parse_instant(text, "as_of") or max_ts


def _reasons(df: pl.DataFrame) -> dict[str, int]:
    from features.data.validate import reason_counts

    return reason_counts(df)


def _reason_dict(counts: pl.DataFrame) -> dict[str, int]:
    if counts.is_empty():
        return {}
    agg = counts.group_by(S.REASON).agg(pl.col("len").sum()).sort(["len", S.REASON], descending=[True, False])
    return {r: int(n) for r, n in agg.iter_rows()}


def _cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


QUARANTINE_WARNING = 0.2  # the summary warns above this share of quarantined events


def summary(m: dict) -> str:
    x = m["metrics"]
    lines = [
        f"features {m['version']} -> {m['path']}",
        f"  events: {x['events_in']:,} read, {x['events_valid']:,} valid, {x['events_quarantined']:,} quarantined",
    ]
    for r, n in x["events_quarantined_by_reason"].items():
        lines.append(f"    {r:<24} {n:>10,}")
    share = x["events_quarantined"] / max(x["events_in"], 1)
    if share > QUARANTINE_WARNING:  # a mapping or id mix-up more often than dirty rows
        top = next(iter(x["events_quarantined_by_reason"]), "?")
        lines.append(f"  WARNING: {share:.0%} of the events were quarantined, most for {top}; the rows and reasons "
                     "are in the version's quarantine/ folder")
    lines.append(f"  items:  {x['items_in']:,} read, {x['items_valid']:,} valid")
    for r, n in x["items_quarantined_by_reason"].items():
        lines.append(f"    {r:<24} {n:>10,}")
    lines.append(f"  users: {x['users']:,}   co-occurrence pairs: {x['cooccurrence_pairs']:,}")
    lines.append(f"  split: valid from {x['valid_start']}, test from {x['test_start']} (as of {x['as_of']})")
    for k, n in x["examples"].items():
        lines.append(f"    examples {k:<20} {n:>10,}")
    lines.append(f"  {x['seconds']}s on {x['num_partitions']} partitions")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[1].strip(), "build_features.yaml", argv)

    def body() -> int:
        cfg = load_job_config(BuildFeaturesConfig, args)
        init_ray(cfg.ray)
        print(summary(run(cfg)), flush=True)
        return 0

    return run_job("build_features", body)


if __name__ == "__main__":
    sys.exit(main())
