"""Glue shared by the job entrypoints: arguments, config, Ray start-up, key partitioning."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import polars as pl
import pyarrow as pa
import ray

from features import artifacts as A
from features.config import ConfigError, load_config, to_dict

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class RayConfig:
    """address: None starts a private local Ray (or joins the cluster of a `ray job submit`);
    "auto" or host:port joins a running cluster. num_cpus applies to a private local Ray only
    (Ray can misread container CPU limits, so it is always explicit)."""

    address: str | None = None
    num_cpus: int = 2
    # Threads polars may use inside each Ray task. Polars is multi-threaded by default, so on a
    # small machine every task would fight for every core; 1 makes Ray's CPU slots the parallelism.
    worker_threads: int = 1


def parse_args(description: str, default_config: str, argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", default=str(CONFIG_DIR / default_config),
                    help=f"YAML config (default: jobs/configs/{default_config})")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set split.test_days=14 (repeatable)")
    return ap.parse_args(argv)


def load_job_config(cls: type, args: argparse.Namespace) -> Any:
    cfg = load_config(cls, args.config, args.set)
    # One line (the manifest of every version keeps it too): logs stay readable, nothing is lost.
    print("resolved config:", json.dumps(to_dict(cfg), default=str), flush=True)
    return cfg


def ray_system_config(num_cpus: int) -> dict[str, int]:
    """Ray system settings for a node that runs these jobs: keep idle worker processes instead of
    killing them. Ray's defaults keep num_cpus idle workers and kill the rest after 1 s idle, so
    every short Ray Data operator that starts actors (the hash shuffle's aggregators, the encoder's
    actor pool) or outlives them starts new Python processes, ~3 s each on a small machine. Measured
    on 2 CPUs, the feature job on 10,000 events: 34 s with the defaults, 16 s cold and 5 s warm with
    these (docs/operations.md). The extra idle workers cost memory only (~150 MB each)."""
    if num_cpus < 1:
        raise ConfigError(f"num_cpus must be >= 1, got {num_cpus}")
    return {"num_workers_soft_limit": 2 * num_cpus + 4, "idle_worker_killing_time_threshold_ms": 60_000}


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread, as in a Ray actor (Ray sets its
    OMP_NUM_THREADS from the actor's CPUs, so every serving replica has one). For code that answers
    requests one by one outside an actor (the evaluation, the ranker's candidate lists, in-process
    benches): a 2-thread matrix product waits for the other core whenever anything else runs there,
    which took a 0.3 ms product (370 candidates x 50 history items) to 6 ms at p50 on 2 busy cores."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def check_fits(rc: RayConfig, cpus: int, gpus: int, what: str) -> None:
    """Fail before Ray starts when work cannot fit the private local Ray this job would start.

    That Ray has ray.num_cpus CPUs and the machine's GPUs and never grows, so an actor or a Ray Train
    worker group that asks for more waits forever (Ray only logs "No available node types can
    fulfill resource request"). `what` names the fields that asked, e.g. "num_workers x
    cpus_per_worker". A cluster (ray.address, RAY_ADDRESS) may grow and a caller's own Ray is theirs:
    neither is checked."""
    if rc.address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return
    if cpus > rc.num_cpus:
        raise ConfigError(f"{what} ask for {cpus} CPUs but ray.num_cpus is {rc.num_cpus}, and the job's local Ray "
                          f"never grows: lower them to fit, or raise ray.num_cpus (up to this machine's {os.cpu_count()})")
    if gpus > 0:
        import torch

        have = torch.cuda.device_count()
        if gpus > have:
            raise ConfigError(f"{what} ask for {gpus:g} GPU(s) but this machine has {have} CUDA GPU(s) for the job's "
                              f"local Ray: set them to use none (use_gpu=false, gpus_per_actor=0), or run on a GPU machine")


# Worker-group starts a Ray Train run tries before it fails (each waits RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S,
# 60 s): a worker group that cannot be placed fails with Ray Train's error after about 10 minutes
# instead of retrying for ever (Ray Train's default).
TRAIN_START_TRIES = 10


def free_cpus_per_worker(num_workers: int, cpus_per_worker: int, what: str) -> int:
    """`cpus_per_worker`, lowered (to at least 1) where the cluster has fewer CPUs free right now than
    the worker group asks for. A Serve app on the same cluster holds part of its CPUs (`make demo`,
    then `make run` on a shop's data), and a worker group asking for more than is free never
    starts. Says so when it lowers."""
    free = float(ray.available_resources().get("CPU", 0.0))
    if num_workers * cpus_per_worker <= free:
        return cpus_per_worker
    fit = max(1, int(free // num_workers))
    if fit < cpus_per_worker:
        total = float(ray.cluster_resources().get("CPU", 0.0))
        print(f"{what}: {free:g} of the cluster's {total:g} CPUs are free (the rest are held by other work, such as a "
              f"running Serve app): {num_workers} worker(s) x {fit} CPU instead of x {cpus_per_worker}", flush=True)
    return min(fit, cpus_per_worker)


def train_failure_config() -> "ray.train.FailureConfig":
    """Ray Train's failure handling for the jobs' runs: no retry of a failing training loop (a bug
    or bad data fails the job at once), TRAIN_START_TRIES worker-group starts."""
    import ray.train

    return ray.train.FailureConfig(max_failures=0, controller_failure_limit=TRAIN_START_TRIES)


def cluster_gpus() -> int:
    """GPUs in the Ray cluster this process is connected to (0 before ray.init)."""
    return int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0


def fine_tune_plan(setting: bool | str, gpus: int) -> tuple[bool, int, str]:
    """(whether to fine-tune the text encoder, how many Ray Train workers get a GPU each, a line
    saying why) for `fine_tune` (the pipeline's and the evaluation's) on a cluster with `gpus`
    GPUs. `auto` trains on the GPUs (at most 8 workers) and skips a CPU-only cluster: on 2 CPUs the
    demo's 240 s fine-tune of the bundled log kept the zero-shot encoder on its valid split in every
    recorded run (docs/operations.md), for 4-5 minutes. true: as configured, CPUs included."""
    if setting == "auto" and gpus > 0:
        n = min(gpus, 8)
        return True, n, f"fine-tuning on the cluster's GPUs: {n} Ray Train worker(s) with a GPU each (fine_tune=auto)"
    if setting == "auto":
        return False, 0, ("skipped: the cluster has no GPU, so the zero-shot encoder serves (fine_tune=auto; "
                          "fine_tune=true fine-tunes on CPUs, where a few minutes rarely beat zero-shot)")
    return bool(setting), 0, ""


def quiet_worker_logs() -> None:
    """Runs in each worker process of a job's private local Ray (runtime_env's
    worker_process_setup_hook): that Ray has no dashboard, hence no state API, and Ray Train's
    placement-group cleaner logs "Failed to query Ray Train Controller actor state" about once a
    second for as long as a training run lasts. Nothing else is silenced."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def init_ray(rc: RayConfig) -> None:
    """Start or join Ray once; a no-op when the caller (a test, a notebook) already did."""
    if ray.is_initialized():
        return
    if rc.worker_threads < 1:
        raise ConfigError(f"ray.worker_threads must be >= 1, got {rc.worker_threads}")
    address = rc.address or os.environ.get("RAY_ADDRESS")
    # Ray Train's print patch logs a worker's print() and also tees it to the worker's (wrapped)
    # stdout, so every line of a training loop reached the job's log twice.
    runtime_env = {"env_vars": {"POLARS_MAX_THREADS": str(rc.worker_threads), "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        # address="local": a private Ray even when another local cluster runs (e.g. the one `make
        # demo` leaves serving); a bare ray.init() would join it and refuse num_cpus.
        # Without the dashboard there is no state API, so Ray Train's placement-group cleaner warns
        # that it cannot query the controller every second of a training run; the hook quiets it.
        ray.init(address="local", num_cpus=rc.num_cpus, include_dashboard=False, log_to_driver=True,
                 runtime_env=runtime_env | {"worker_process_setup_hook": "jobs.common.quiet_worker_logs"},
                 _system_config=ray_system_config(rc.num_cpus))
    ctx = ray.data.DataContext.get_current()
    # Progress bars on a terminal; in logs (CI, `ray job logs`) the jobs print one line per step.
    ctx.enable_progress_bars = sys.stderr.isatty()
    logging.getLogger("ray.data").setLevel(logging.INFO if sys.stderr.isatty() else logging.WARNING)
    # "Progress bars disabled" is printed once per process when they are off on purpose (logs).
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


class Steps:
    """Prints `[n] what ... 1.2s` lines: progress for long jobs that also reads well in a log."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.t0 = self.last = time.perf_counter()
        self.n = 0
        self.current = ""  # the step under way ("" before the first)

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        self.current = what
        if self.n:
            print(f"         done in {now - self.last:.1f}s", flush=True)
        self.n += 1
        self.last = now
        print(f"[{self.name} {self.n}] {what} (t={now - self.t0:.1f}s)", flush=True)


def run_job(name: str, fn: Callable[[], int]) -> int:
    """Run a job body; map expected failures to a one-line error and exit code 2."""
    from features.data.validate import SchemaError

    t0 = time.perf_counter()
    try:
        code = fn()
    except (ConfigError, SchemaError, FileNotFoundError, ValueError) as e:
        print(f"{name}: error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"{name}: finished in {time.perf_counter() - t0:.1f}s", flush=True)
    return code


def train_run_dir(output_root: str, run_name: str) -> tuple[str, bool]:
    """(storage_path for Ray Train's RunConfig, whether run `run_name` already exists there: a resume).
    Runs live under <output_root>/train_runs/, local (made absolute) or a URI."""
    storage = (A.join(output_root, "train_runs") if A.is_uri(output_root)
               else str(Path(output_root, "train_runs").resolve()))
    fs, inner = A.resolve(A.join(storage, run_name))
    return storage, fs.get_file_info(inner).type != A.pafs.FileType.NotFound


# --- data movement --------------------------------------------------------------------------
_CACHE: dict[str, Any] = {}


def cached_get(ref: ray.ObjectRef) -> Any:
    """ray.get once per worker process (broadcast tables are fetched once, not per batch)."""
    key = ref.hex()
    if key not in _CACHE:
        if len(_CACHE) >= 4:  # a job broadcasts a handful of tables; drop the oldest
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = ray.get(ref)
    return _CACHE[key]


def partition_by_key(
    ds: "ray.data.Dataset", key: str | list[str], num_partitions: int, strategy: str = "hash"
) -> "ray.data.Dataset":
    """Co-locate rows sharing `key`: afterwards every key value lives in exactly one block.

    This is the shuffle that Ray's own groupby().map_groups() performs; we then call a batch
    function per *block* (many keys at once, vectorised in polars) instead of once per group.
    strategy "hash" is Ray's hash shuffle (faster); "sort" its range-partitioning sort, used
    after generator UDFs, whose schema-less empty blocks Ray 2.60's hash shuffle cannot concat.
    """
    from ray.data.context import ShuffleStrategy

    keys = [key] if isinstance(key, str) else list(key)
    if strategy == "hash" and ds.context.shuffle_strategy in (ShuffleStrategy.HASH_SHUFFLE, ShuffleStrategy.SHUFFLE_V2):
        return ds.repartition(num_partitions, keys=keys, sort=True)
    if strategy not in ("hash", "sort"):
        raise ValueError(f"strategy: {strategy!r}; allowed: 'hash', 'sort'")
    return ds.sort(keys)


def write_table(output: str, name: str, df: pl.DataFrame, schema: pa.Schema | None = None) -> None:
    """<output>/<name>.parquet (a local folder or a URI); with `schema`, its columns in its order and
    types (those of its columns the frame has)."""
    import pyarrow.parquet as pq

    from features import artifacts as A

    fs, inner = A.resolve(output)
    fs.create_dir(inner, recursive=True)
    table = df.to_arrow(compat_level=pl.CompatLevel.oldest())
    if schema is not None:
        schema = pa.schema([f for f in schema if f.name in df.columns])
        table = table.select(schema.names).cast(schema)
    with fs.open_output_stream(A.join(inner, f"{name}.parquet")) as f:
        pq.write_table(table, f)


def to_polars(ds: "ray.data.Dataset") -> pl.DataFrame:
    """Collect a (small) dataset to the driver as one polars frame."""
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return pl.DataFrame()
    return pl.from_arrow(pa.concat_tables(tables, promote_options="default"))  # type: ignore[return-value]


def polars_batch(fn: Callable[..., pl.DataFrame]) -> Callable[..., pa.Table]:
    """Adapt a polars function to a Ray Data map_batches UDF over pyarrow batches."""

    def wrapper(batch: pa.Table, **kwargs: Any) -> pa.Table:
        df = pl.from_arrow(batch)
        assert isinstance(df, pl.DataFrame)
        return fn(df, **kwargs).to_arrow()

    wrapper.__name__ = getattr(fn, "__name__", "polars_batch")
    return wrapper
