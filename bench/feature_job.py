"""Benchmark: build_features on Ray Data vs the same aggregations in one polars process.

    python -m bench.feature_job [--replicas 10]

The bundled canonical events are replicated (bench/scale_data.py: shifted user/session/event ids
and timestamps) to >= 5 million events. In one run, on one machine:
  - polars: features.pipeline.build_local (the same transform functions) in this process,
    reading the same files and writing the same outputs;
  - Ray Data with num_cpus=2 and num_cpus=1: `python -m jobs.build_features` in a fresh process each
    (a private local Ray), so neither run inherits the other's warm workers.
Each Ray run reports the job's own time (manifest metrics.seconds: Ray already up) and the wall
time of the whole command (Ray start-up included). Ratios are against the polars run.
Writes bench/results/feature_job.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from features import artifacts as A
from features.artifacts import git_commit
from features.data.pipeline import SplitConfig, build_local
from features.data.transforms import FeatureParams
from features.data.validate import ValidationConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import ray

    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": round(mem_gib, 1),
            "python": platform.python_version(), "polars": pl.__version__, "ray": ray.__version__,
            "polars_threads": pl.thread_pool_size()}


def write_result(path: str | Path, result: dict) -> None:
    """Write a bench's JSON result (its folder made if missing) and say where."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


def run_polars(events: Path, items: Path, out: Path) -> dict:
    """The same outputs in one process, the users' seed profiles included (jobs/build_features.py
    folds them per user block: features/profiles/seed.py)."""
    from features.profiles.profile import ProfileParams
    from features.profiles.seed import with_seeds

    t0 = time.perf_counter()
    ev, it = pq.read_table(events), pq.read_table(items)
    ft = build_local(ev, it, ValidationConfig(), FeatureParams(), SplitConfig())
    users = with_seeds(ft.users, pl.from_arrow(ev), pl.from_arrow(it), ProfileParams(), ft.as_of)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    ft.items.write_parquet(out / "items.parquet")
    users.write_parquet(out / "users.parquet")
    ft.cooccurrence.write_parquet(out / "cooccurrence.parquet")
    for split, part in ft.examples.partition_by("split", as_dict=True).items():
        part.write_parquet(out / f"examples_{split[0]}.parquet")
    ft.events_quarantine.write_parquet(out / "quarantine.parquet")
    return {"seconds": time.perf_counter() - t0, "events": ft.counts["events_in"], "users": ft.users.height,
            "cooccurrence_pairs": ft.cooccurrence.height, "examples": ft.examples.height}


def run_ray(events: Path, items: Path, out: Path, num_cpus: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "jobs.build_features", "--set", f"events={events}", "--set", f"items={items}",
           "--set", f"output_root={out}", "--set", f"ray.num_cpus={num_cpus}", "--set", f"ray.worker_threads={threads}"]
    env = dict(os.environ, RAY_ADDRESS="")  # a private local Ray, never a running cluster
    env.pop("RAY_ADDRESS")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"build_features failed (num_cpus={num_cpus}):\n{proc.stderr[-3000:]}")
    m = A.read_manifest(A.latest_complete(str(out), "features"))["metrics"]
    return {"seconds": m["seconds"], "wall_seconds": wall, "events": m["events_in"], "users": m["users"],
            "cooccurrence_pairs": m["cooccurrence_pairs"], "examples": sum(m["examples"].values()),
            "num_partitions": m["num_partitions"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--events", default="data/canonical/online_retail/events.parquet")
    ap.add_argument("--items", default="data/canonical/online_retail/items.parquet")
    a = ap.parse_args()
    data = ROOT / "bench" / ".data" / f"events_x{a.replicas}"
    if not data.exists():
        subprocess.run([sys.executable, "-m", "bench.scale_data", "--events", a.events, "--replicas",
                        str(a.replicas), "--out", str(data)], cwd=ROOT, check=True)
    items = (ROOT / a.items).resolve()
    n_events = sum(pq.ParquetFile(f).metadata.num_rows for f in data.glob("*.parquet"))
    print(f"{n_events:,} events, {pq.ParquetFile(items).metadata.num_rows:,} items; machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        print("polars (single process) ...", flush=True)
        runs["polars"] = run_polars(data, items, Path(tmp) / "polars")
        # Default (worker_threads=1: Ray's CPU slots are the parallelism), then polars' own
        # threads inside each task, which oversubscribes the cores but costs less coordination.
        for cpus, threads in ((2, 1), (1, 1), (2, 2)):
            name = f"ray_cpus{cpus}" + ("" if threads == 1 else f"_threads{threads}")
            print(f"ray data num_cpus={cpus} worker_threads={threads} ...", flush=True)
            runs[name] = run_ray(data, items, Path(tmp) / name, cpus, threads)
    base = runs["polars"]["seconds"]
    for name, r in runs.items():
        r["events_per_s"] = n_events / r["seconds"]
        r["ratio_vs_polars"] = r["seconds"] / base
        if "wall_seconds" in r:
            r["wall_ratio_vs_polars"] = r["wall_seconds"] / base
    same = {(r["users"], r["cooccurrence_pairs"], r["examples"]) for r in runs.values()}
    result = {
        "benchmark": "feature_job", "events": n_events, "replicas": a.replicas, "machine": machine(),
        "runs": runs, "outputs_identical_counts": len(same) == 1,
        "targets": {"ray2_within_2x_of_polars": runs["ray_cpus2"]["ratio_vs_polars"] <= 2.0,
                    "ray2_faster_than_ray1": runs["ray_cpus2"]["seconds"] < runs["ray_cpus1"]["seconds"]},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feature_job.json").write_text(json.dumps({"commit": git_commit(), **result}, indent=2))
    print(f"\n{'run':<20}{'job s':>8}{'wall s':>8}{'events/s':>12}{'x polars':>10}")
    for name, r in runs.items():
        wall = f"{r['wall_seconds']:.1f}" if "wall_seconds" in r else "-"
        print(f"{name:<20}{r['seconds']:>8.1f}{wall:>8}{r['events_per_s']:>12,.0f}{r['ratio_vs_polars']:>10.2f}")
    print(f"targets: {result['targets']}; identical output counts: {result['outputs_identical_counts']}")
    print(f"-> {RESULTS / 'feature_job.json'}")


if __name__ == "__main__":
    main()
