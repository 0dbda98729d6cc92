"""Serving latency under open-loop load: the stable URL, direct ingress and a hand-rolled server.

    python -m bench.serve_latency [--artifacts artifacts] [--rates 10,25,50,100] [--duration-s 15]
                                  [--workloads search,recommend,mix] [--ingress haproxy|proxy]
                                  [--set retriever_placement=deployment] [--replicas Ingress=1]

Systems, all on this machine, one after another, with the same artifacts (newest index, its
features, encoder and ranker) and the same warm-up:
- serve, two paths to the same app (serving/config.yaml's deployment options):
  stable: the fixed address (Ray Serve's HAProxy mode by default, as `make serve` runs it; or its
  Python proxy), which survives a replica's replacement (bench/faults.py);
  direct: the first Ingress replica's own HTTP server (direct ingress), whose port moves;
- floor: the same encoder + retrieval + ranking called in one plain Python process, one request at
  a time, no HTTP (the lowest latency the pipeline can have here);
- handrolled: what a shop would write instead: uvicorn + FastAPI holding the encoder and a flat
  FAISS index, encoding each query on its own (no batching), top-k by inner product. It runs in
  its best configuration: torch or ONNX Runtime x workers x threads, calibrated at 50 requests/s,
  the lowest p99 kept (all four calibrations are in the output).

Workloads: search (distinct queries), recommend, and a 70/20/10 search/recommend/events mix; the
hand-rolled server only has search. Load is open loop: request i is sent at start + i / rate
whatever happened before, and its latency counts from that scheduled instant, so a server that
falls behind is charged for the queue (no coordinated omission). Failed requests (by status; 429
and 503 are load shedding) are counted next to the percentiles. The replica counts Serve reports
after each run are recorded. Freshness: the time from an acknowledged POST /v1/events (a view of a
random item by a new shopper) until a /v1/recommend response reflects it.

Writes bench/results/serve_latency.json with the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from features.artifacts import git_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


# --- workload --------------------------------------------------------------------------------
def make_queries(titles: list[str], n: int, seed: int = 0) -> list[str]:
    """n distinct two-or-three-word queries built from catalog title words."""
    rng = random.Random(seed)
    words = [w for t in titles for w in re.findall(r"[a-z]{3,}", t.lower())]
    out: dict[str, None] = {}
    while len(out) < n:
        out[" ".join(rng.sample(words, rng.choice((2, 2, 3))))] = None
    return list(out)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(lat_ms: list[float], errors: int, sent: int, wall_s: float) -> dict[str, Any]:
    return {"sent": sent, "ok": len(lat_ms), "errors": errors, "error_rate": errors / sent if sent else None,
            "achieved_rps": len(lat_ms) / wall_s if wall_s else None,
            "p50_ms": pct(lat_ms, 50), "p95_ms": pct(lat_ms, 95), "p99_ms": pct(lat_ms, 99),
            "max_ms": max(lat_ms) if lat_ms else None}


def statuses_of(results: list[tuple[int, float | None]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status, _ in results:
        out[str(status)] = out.get(str(status), 0) + 1
    return out


async def open_loop(base: str, requests: list[tuple[str, str, Any]], rate: float, duration_s: float,
                    timeout_s: float = 10.0) -> dict[str, Any]:
    """Send requests[i % len] = (method, path, json body) at start + i / rate; latency from the
    scheduled instant. Failed requests (any status but 200, or no answer: status 0) are counted
    by status and kept out of the percentiles. Where an answer reports its own time (intently's
    `took_ms` and `timings_ms`), "server_split" splits each latency into inside the Ingress and
    outside it (the stable URL's proxy, Serve's HTTP path, the client), with every hop's p50 / p99."""
    import aiohttp

    n = int(rate * duration_s)
    results: list[tuple[int, float | None]] = []
    by_kind: dict[str, list[float]] = {}
    split: dict[str, list[float]] = {}  # "inside", "outside", "hop <name>" -> ms
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        start = time.perf_counter() + 0.05

        async def one(i: int) -> None:
            method, path, body = requests[i % len(requests)]
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            raw = b""
            try:
                async with session.request(method, f"{base}{path}", json=body) as r:
                    raw = await r.read()
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = 0
            ms = (time.perf_counter() - due) * 1e3
            results.append((status, ms if status == 200 else None))
            if status == 200:
                by_kind.setdefault(path, []).append(ms)
                took = took_of(raw)  # parsed after the clock stopped
                if took is not None:
                    split.setdefault("inside", []).append(took[0])
                    split.setdefault("outside", []).append(ms - took[0])
                    for hop, v in took[1].items():
                        split.setdefault(f"hop {hop}", []).append(v)

        await asyncio.gather(*[one(i) for i in range(n)])
        wall = time.perf_counter() - start
    lat = [ms for _, ms in results if ms is not None]
    out = summarise(lat, n - len(lat), n, wall)
    out["failed_by_status"] = {k: v for k, v in statuses_of(results).items() if k != "200"}
    out["shed"] = sum(v for k, v in out["failed_by_status"].items() if k in ("429", "503"))
    out["shed_rate"] = out["shed"] / n if n else None
    if len(by_kind) > 1:
        out["by_endpoint"] = {k: {"ok": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for k, v in by_kind.items()}
    if split:
        out["server_split"] = {k: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for k, v in split.items()}
    return out


def took_of(raw: bytes) -> tuple[float, dict[str, float]] | None:
    """(took_ms, timings_ms) of an intently answer; None for any other body."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("took_ms"), (int, float)):
        return None
    hops = body.get("timings_ms") if isinstance(body.get("timings_ms"), dict) else {}
    return float(body["took_ms"]), {k: float(v) for k, v in hops.items() if isinstance(v, (int, float))}


# --- the hand-rolled baseline ------------------------------------------------------------------
HANDROLLED = '''
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import faiss, numpy as np
from fastapi import FastAPI
from pydantic import BaseModel
from features.models.onnx_encoder import runtime_encoder
from features.retrieval.index import ItemIndex

faiss.omp_set_num_threads(1)
index = ItemIndex.load(os.environ["BENCH_INDEX"])
flat = faiss.IndexFlatIP(index.dim); flat.add(index.vectors())
runtime, _, precision = os.environ["BENCH_RUNTIME"].partition("-")  # onnx-int8: the int8 query tower
encoder, _ = runtime_encoder(os.environ["BENCH_ENCODER"], os.environ["BENCH_ARTIFACTS"], runtime=runtime,
                             threads=int(os.environ["BENCH_THREADS"]), onnx_dir=os.environ.get("BENCH_ONNX") or None,
                             query_precision=precision or "fp32")
app = FastAPI()

class Q(BaseModel):
    query: str
    k: int = 10

@app.post("/v1/search")
def search(q: Q):
    emb = encoder.encode([q.query], "query")
    scores, idx = flat.search(emb, q.k)
    return {"results": [{"item_id": index.item_ids[j], "score": float(s)} for s, j in zip(scores[0], idx[0])]}

@app.get("/healthz")
def healthz():
    return {"status": "ok"}
'''

# What a shop could reasonably run: uvicorn workers x encoder threads on 2 CPUs, torch, ONNX
# Runtime, or ONNX Runtime with the int8 query tower (what encoder.query_precision=int8 gives the
# app). Each is calibrated at 50 requests/s and the best (lowest p99) gets the full run.
HANDROLLED_CONFIGS = (("torch", 1, 2), ("torch", 2, 1), ("onnx", 1, 2), ("onnx", 2, 1), ("onnx-int8", 1, 2),
                      ("onnx-int8", 2, 1))


def start_handrolled(res: Any, artifacts: str, port: int, runtime: str, workers: int, threads: int) -> subprocess.Popen:
    tmp = Path(tempfile.mkdtemp()) / "handrolled_app.py"
    tmp.write_text(HANDROLLED)
    env = dict(os.environ, BENCH_INDEX=res.index_dir, BENCH_ENCODER=res.encoder_spec, BENCH_ARTIFACTS=artifacts,
               BENCH_RUNTIME=runtime, BENCH_THREADS=str(threads), BENCH_ONNX=res.encoder_onnx or "",
               PYTHONPATH=f"{ROOT}:{tmp.parent}")
    return subprocess.Popen([sys.executable, "-m", "uvicorn", "handrolled_app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
                            env=env, start_new_session=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout_s: float = 300.0) -> None:
    import urllib.request

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout_s}s")


# --- the in-process floor ----------------------------------------------------------------------
PACED_FLOOR_S = 0.02  # what each of two Ingress replicas sees at 100 req/s


def floor(res: Any, cfg: Any, queries: list[str], users: list[str], n: int) -> dict[str, Any]:
    """Sequential per-request latency of the app's own encoder, retrieval and ranking code (the
    Retriever deployment's class body, with the behaviour model and the learned ranker) in this
    process: no HTTP, no Serve hops. Back to back ("search", "recommend"), and again with
    PACED_FLOOR_S of sleep before each request, as a replica under load sees them: on this box the
    caches go cold in between (bench/cold_cache.py), so the paced floor is what the replica's own
    took_ms should be compared with."""
    import polars as pl

    from features import artifacts as A
    from features.data import schema as S
    from features.models.onnx_encoder import runtime_encoder
    from features.profiles.seed import seed_profiles, seeded_with
    from features.retrieval.ranking import context_for
    from serving.retriever import RetrieverCore

    e = cfg.encoder
    encoder, _ = runtime_encoder(res.encoder_spec, cfg.artifacts_root, e.zero_shot, e.runtime, e.threads, res.encoder_onnx,
                                 query_precision=e.query_precision)
    retriever = RetrieverCore(cfg, res)
    catalog = retriever.live.catalog
    p = cfg.profiles.params
    rows = pl.read_parquet(A.join(res.features_dir, "users")).filter(pl.col(S.USER_ID).is_in(users))
    profiles = {prof.user_id: prof for prof in seed_profiles(rows, catalog.lookup, p, seeded_with(res.features_dir))}

    def search(i: int) -> None:
        q = queries[i % len(queries)]
        ctx = context_for("search", None, time.time(), p, q, encoder.encode([q], "query")[0])
        retriever.search(ctx, None, frozenset(), 10)

    def recommend(i: int) -> None:
        ctx = context_for("recommend", profiles.get(users[i % len(users)]), time.time(), p)
        retriever.recommend(ctx, None, ctx.purchased, 10)

    from jobs.common import one_blas_thread

    out = {}
    with one_blas_thread():  # as in a replica (a Ray actor with one CPU's worth of threads)
        for pause_s in (0.0, PACED_FLOOR_S):
            for ep, fn in (("search", search), ("recommend", recommend)):
                lat = []
                for i in range(n):
                    if pause_s:
                        time.sleep(pause_s)
                    t0 = time.perf_counter()
                    fn(i)
                    lat.append((time.perf_counter() - t0) * 1e3)
                key = ep if not pause_s else f"{ep}, {pause_s * 1e3:.0f} ms apart"
                out[key] = {"n": n, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}
    return out


# --- where a request's time goes -----------------------------------------------------------------
async def hops(base: str, requests: list[tuple[str, str, Any]]) -> dict[str, Any]:
    """One request at a time: the client's wall time, the app's own took_ms, and its timings_ms per
    downstream hop (p50 each), so the HTTP + ingress overhead is the difference."""
    import aiohttp

    client, took, per_hop = [], [], {}
    async with aiohttp.ClientSession() as s:
        for method, path, body in requests:
            t0 = time.perf_counter()
            async with s.request(method, f"{base}{path}", json=body) as r:
                out = await r.json()
            client.append((time.perf_counter() - t0) * 1e3)
            took.append(out["took_ms"])
            for k, v in out.get("timings_ms", {}).items():
                per_hop.setdefault(k, []).append(v)
    return {"n": len(requests), "client_p50_ms": pct(client, 50), "took_p50_ms": pct(took, 50),
            "hops_p50_ms": {k: pct(v, 50) for k, v in per_hop.items()}}


# --- freshness ---------------------------------------------------------------------------------
async def freshness(base: str, items: list[tuple[str, str]], trials: int) -> dict[str, Any]:
    import aiohttp

    lat, misses, examples, profile_hits, by_view = [], 0, [], 0, 0
    async with aiohttp.ClientSession() as s:
        for t in range(trials):
            user = f"fresh-{t}-{random.randrange(10**9)}"
            item_id, title = items[t % len(items)]
            async with s.post(f"{base}/v1/events", json=[{"user_id": user, "event_type": "view", "item_id": item_id}]) as r:
                assert r.status == 200, await r.text()
                acked = time.perf_counter()
            seen = False
            known_at_once = None
            for _ in range(50):
                async with s.post(f"{base}/v1/recommend", json={"user_id": user, "k": 10}) as r:
                    body = await r.json()
                if known_at_once is None:  # the first answer after the acknowledgement
                    known_at_once = bool(body.get("user_known"))
                    profile_hits += known_at_once
                reasons = [x for res in body["results"] for x in res["reasons"]]
                if any(names_item(x, title) for x in reasons):
                    seen = True
                    by_view += viewed_reasons(title)[0] in reasons
                    break
            if seen:
                lat.append((time.perf_counter() - acked) * 1e3)
            else:
                misses += 1
                if len(examples) < 5:  # what the answer said instead (a ranking question, or staleness?)
                    examples.append({"viewed": title, "user_known": body.get("user_known"),
                                     "answer": [(x["title"], x["reasons"]) for x in body["results"][:3]]})
    return {"trials": trials, "profile_has_the_event_on_the_first_answer": profile_hits,
            "not_visible_after_50_requests": misses, "visible_as_because_you_viewed": by_view,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "missed_examples": examples,
            "definition": "visible = a /v1/recommend answer names <that item> in a reason of one of its 10 results "
                          f"({'; '.join(viewed_reasons('<item>'))}); visible_as_because_you_viewed counts the answers that "
                          "did so with the first form; the profile check = the first answer after the "
                          "acknowledgement has user_known true (the shopper is new, so only the event can have "
                          "made the profile)"}


def viewed_reasons(title: str) -> tuple[str, ...]:
    """The reasons features/retrieval/ranking.py gives that name a viewed item titled `title`."""
    from features.retrieval.reasons import BECAUSE, LIKED, OFTEN_WITH, TOGETHER

    return (BECAUSE.format(verb="viewed", title=title),
            *(t.format(title=title) for t in (*OFTEN_WITH.values(), *TOGETHER.values(), *LIKED.values())))


def names_item(reason: str, title: str) -> bool:
    return reason in viewed_reasons(title)


# --- main --------------------------------------------------------------------------------------
WORKLOADS = ("search", "recommend", "mix")
MIX = "70% search, 20% recommend, 10% events (a view of a random item by a sampled shopper), interleaved"


def ingress_env(ingress: str, direct_port: int) -> dict[str, str]:
    """What `make ray-up` exports, for a bench's private Ray (set before Ray or Serve is imported)."""
    from serving.sizing import haproxy_threads, host_cpus

    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(direct_port),
           "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(direct_port + 20)}
    if ingress == "haproxy":
        env.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_HAPROXY_NBTHREAD=str(haproxy_threads(host_cpus())),
                   RAY_SERVE_HAPROXY_METRICS_ENABLED="0")
    return env


def replica_counts() -> dict[str, int]:
    from ray import serve

    app = serve.status().applications.get("intently")
    if app is None:
        return {}
    return {name: int(sum(n for state, n in d.replica_states.items() if str(state).endswith("RUNNING")))
            for name, d in app.deployments.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--rates", default="10,25,50,100")
    ap.add_argument("--duration-s", type=float, default=15.0)
    ap.add_argument("--floor-requests", type=int, default=300)
    ap.add_argument("--freshness-trials", type=int, default=100)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"any of {', '.join(WORKLOADS)}")
    ap.add_argument("--ingress", choices=("haproxy", "proxy"), default="haproxy",
                    help="what serves the stable URL: Ray Serve's HAProxy mode (the default of `make serve`) or "
                         "its Python proxy")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a serving/config.yaml override for the app and the floor, e.g. encoder.query_precision=int8 "
                         "(repeatable)")
    ap.add_argument("--replicas", action="append", default=[], metavar="DEPLOYMENT=N",
                    help="run N replicas of a deployment (min = max), e.g. Ingress=1 (repeatable)")
    ap.add_argument("--out", default=str(RESULTS / "serve_latency.json"))
    ap.add_argument("--freshness-only", metavar="URL", help="only the freshness trials against a running app "
                    "(e.g. make serve's http://127.0.0.1:8000, with anonymous writes); writes bench/results/freshness.json")
    ns = ap.parse_args(argv)
    if ns.freshness_only:
        return freshness_only(ns.freshness_only, ns.artifacts, ns.freshness_trials)
    workloads = [w for w in ns.workloads.split(",") if w]
    bad = sorted(set(workloads) - set(WORKLOADS))
    if bad:
        ap.error(f"--workloads: unknown {bad}; allowed: {', '.join(WORKLOADS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rates = [float(r) for r in ns.rates.split(",")]
    direct = free_port()
    env = ingress_env(ns.ingress, direct)
    os.environ.update(env)

    import polars as pl
    import ray
    from ray import serve

    from features import artifacts as A
    from features.data import schema as S
    from serving.app import build_app_with_options, load_serve_config
    from serving.settings import ServingConfig, resolve

    state = Path(tempfile.mkdtemp(prefix="bench-serve-state-"))
    conf = load_serve_config(overrides=[f"artifacts_root={Path(ns.artifacts).resolve()}", f"state_dir={state}",
                                        "encoder.cache_size=0", "allow_anonymous_writes=true", *ns.overrides])
    for spec in ns.replicas:
        name, _, n = spec.partition("=")
        if name not in conf["deployment_options"] or not n.isdigit() or int(n) < 1:
            ap.error(f"--replicas {spec!r}: expected DEPLOYMENT=N with N >= 1; deployments: "
                     f"{', '.join(conf['deployment_options'])}")
        opts = conf["deployment_options"][name]
        opts["autoscaling_config"] = {**opts.get("autoscaling_config", {}), "min_replicas": int(n), "max_replicas": int(n)}
    cfg = ServingConfig.from_args(conf["args"])
    res = resolve(cfg)
    items = pl.read_parquet(A.join(res.features_dir, "items"), columns=[S.ITEM_ID, S.TITLE])
    titles, item_ids = items[S.TITLE].to_list(), items[S.ITEM_ID].to_list()
    n_req = int(max(rates) * ns.duration_s) + 10
    pool = iter(make_queries(titles, n_req * len(rates) * 8 + len(HANDROLLED_CONFIGS) * 600 + 2000))
    users = pl.read_parquet(A.join(res.features_dir, "users"), columns=[S.USER_ID])[S.USER_ID].sample(
        500, seed=0, with_replacement=False).to_list()
    rng = random.Random(0)

    def searches(n: int) -> list[tuple[str, str, Any]]:
        """n queries never sent before (the query cache is off too)."""
        return [("POST", "/v1/search", {"query": next(pool), "k": 10}) for _ in range(n)]

    def workload(name: str, n: int) -> list[tuple[str, str, Any]]:
        if name == "search":
            return searches(n)
        if name == "recommend":
            return [("POST", "/v1/recommend", {"user_id": users[i % len(users)], "k": 10}) for i in range(n)]
        out = []
        for i in range(n):  # the 70/20/10 mix, interleaved
            if i % 10 < 7:
                out += searches(1)
            elif i % 10 < 9:
                out.append(("POST", "/v1/recommend", {"user_id": rng.choice(users), "k": 10}))
            else:
                out.append(("POST", "/v1/events", [{"user_id": rng.choice(users), "event_type": "view",
                                                    "item_id": rng.choice(item_ids)}]))
        return out

    report: dict[str, Any] = {
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": res.versions, "rates_rps": rates, "duration_s": ns.duration_s,
        "encoder_runtime": cfg.encoder.runtime, "query_precision": cfg.encoder.query_precision,
        "serve_overrides": list(ns.overrides), "replicas": list(ns.replicas), "ingress": ns.ingress, "environment": env,
        "workloads": {"search": "distinct 2-3 word queries from catalog title words, never repeated (query cache off)",
                      "recommend": "sampled shoppers from the feature job", "mix": MIX},
        "warm_up": "every system: 5 s of distinct searches at 20 requests/s before its measured runs",
    }

    def warm(base: str) -> None:
        asyncio.run(open_loop(base, searches(100), 20, 5))

    print("floor: in-process encoder + retrieval + ranking, one request at a time", flush=True)
    report["floor"] = floor(res, cfg, [next(pool) for _ in range(ns.floor_requests)], users, ns.floor_requests)
    print(json.dumps(report["floor"]), flush=True)

    def run_handrolled(runtime: str, workers: int, threads: int, runs: list[float], duration_s: float) -> dict:
        port = free_port()
        proc = start_handrolled(res, cfg.artifacts_root, port, runtime, workers, threads)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/healthz")
            warm(base)
            return {str(int(r)): asyncio.run(open_loop(base, searches(int(r * duration_s)), r, duration_s)) for r in runs}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

    print("handrolled: uvicorn + FastAPI + flat FAISS, one query per encode; calibrating its configuration", flush=True)
    calib = {}
    for runtime, workers, threads in HANDROLLED_CONFIGS:
        r = run_handrolled(runtime, workers, threads, [50.0], 10.0)["50"]
        calib[f"{runtime}, {workers} worker(s) x {threads} thread(s)"] = r
        print(f"  {runtime} {workers}w x {threads}t @ 50 rps: p50 {r['p50_ms']} p99 {r['p99_ms']} errors {r['errors']}",
              flush=True)
    best = min(HANDROLLED_CONFIGS, key=lambda c: (calib[f"{c[0]}, {c[1]} worker(s) x {c[2]} thread(s)"]["errors"],
                                                  calib[f"{c[0]}, {c[1]} worker(s) x {c[2]} thread(s)"]["p99_ms"] or 1e9))
    label = f"{best[0]}, {best[1]} worker(s) x {best[2]} thread(s)"
    print(f"handrolled: best configuration {label}; full run", flush=True)
    report["handrolled"] = {"calibration_at_50rps_10s": calib, "configuration": label,
                            "search": run_handrolled(*best, rates, ns.duration_s)}
    for rate, r in report["handrolled"]["search"].items():
        print(f"  handrolled search @ {rate} rps: {json.dumps(r)}", flush=True)

    print(f"serve: the intently app, stable URL through {ns.ingress}, and direct ingress", flush=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    sport = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": sport})
    serve.run(build_app_with_options(conf["args"], conf["deployment_options"]), name="intently", route_prefix="/")
    paths = {"stable": f"http://127.0.0.1:{sport}", "direct": f"http://127.0.0.1:{direct}"}
    report["paths"] = {"stable": f"{ns.ingress} on the fixed port (survives replica replacement; bench/faults.py)",
                       "direct": "direct ingress: the first Ingress replica's own HTTP server (its port moves when it "
                                 "is replaced)"}
    try:
        for base in paths.values():
            wait_http(f"{base}/healthz", 180)
        warm(paths["stable"])
        report["serve"] = {}
        for w in workloads:
            for path, base in paths.items():
                runs = report["serve"].setdefault(path, {}).setdefault(w, {})
                for rate in rates:
                    r = asyncio.run(open_loop(base, workload(w, int(rate * ns.duration_s)), rate, ns.duration_s))
                    r["replicas_after"] = replica_counts()
                    runs[str(int(rate))] = r
                    print(f"  {path} {w} @ {rate:g} rps: {json.dumps(r)}", flush=True)
        report["hops"] = {ep: asyncio.run(hops(paths["stable"], workload(ep, 200))) for ep in ("search", "recommend")}
        print(f"  hops (sequential, stable URL): {json.dumps(report['hops'])}", flush=True)
        sample = items.sample(200, seed=1)
        report["freshness"] = asyncio.run(freshness(paths["stable"], list(zip(sample[S.ITEM_ID], sample[S.TITLE])),
                                                    ns.freshness_trials))
        print(f"  freshness: {json.dumps(report['freshness'])}", flush=True)
        import urllib.request

        with urllib.request.urlopen(f"{paths['stable']}/healthz") as r:
            report["serve_encoder_stats"] = json.loads(r.read())["encoder"]
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(state, ignore_errors=True)

    report["targets"] = targets(report, rates)
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(report, indent=2))
    print_table(report, rates)
    print(f"wrote {ns.out}")
    return 0


def freshness_only(base: str, artifacts: str, trials: int) -> int:
    import polars as pl

    from features import artifacts as A
    from features.data import schema as S

    features_dir = A.latest_complete(artifacts, "features")
    items = pl.read_parquet(A.join(features_dir, "items"), columns=[S.ITEM_ID, S.TITLE]).sample(200, seed=1)
    out = {"commit": git_commit(), "url": base, "features": features_dir,
           **asyncio.run(freshness(base, list(zip(items[S.ITEM_ID], items[S.TITLE])), trials))}
    path = RESULTS / "freshness.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


def targets(report: dict, rates: list[float]) -> dict[str, Any]:
    s, h, f = report["serve"], report["handrolled"]["search"], report["floor"]
    st = s.get("stable", {})
    out: dict[str, Any] = {}

    def get(runs: dict, workload: str, rate: str) -> dict | None:
        return runs.get(workload, {}).get(rate)

    a, b = get(st, "search", "50"), h.get("50")
    if a and b:
        out["stable_search_p99_at_50rps_le_handrolled"] = {
            "stable_ms": a["p99_ms"], "handrolled_ms": b["p99_ms"], "stable_errors": a["errors"],
            "met": a["errors"] == 0 and (a["p99_ms"] or 1e9) <= (b["p99_ms"] or 1e9)}
    a = get(st, "recommend", "50")
    if a:
        out["stable_recommend_p99_at_50rps_le_60ms"] = {"p99_ms": a["p99_ms"], "errors": a["errors"],
                                                         "met": a["errors"] == 0 and (a["p99_ms"] or 1e9) <= 60}
    a = get(st, "mix", "100")
    if a:
        out["stable_mix_100rps_p99_le_150ms_shed_le_0_5pct"] = {
            "p99_ms": a["p99_ms"], "achieved_rps": a["achieved_rps"], "shed_rate": a["shed_rate"],
            "other_failures": a["errors"] - a["shed"],
            "met": (a["p99_ms"] or 1e9) <= 150 and (a["shed_rate"] or 0) <= 0.005 and a["errors"] == a["shed"]}
    low = str(int(min(rates)))
    for ep in ("search", "recommend"):
        r = get(st, ep, low)
        if r:
            ratio = (r["p50_ms"] or 1e9) / f[ep]["p50_ms"]
            out[f"stable_{ep}_p50_vs_floor_at_{low}rps"] = {"ratio": ratio, "met": ratio <= 1.5}
    fr = report.get("freshness", {})
    if fr.get("trials"):  # not judged when the run skipped it (--freshness-trials 0)
        out["freshness_p99_under_100ms"] = {"p99_ms": fr.get("p99_ms"), "met": (fr.get("p99_ms") or 1e9) < 100
                                            and not fr.get("not_visible_after_50_requests")}
    return out


def print_table(report: dict, rates: list[float]) -> None:
    def f(x):
        return f"{x:9.1f}" if x is not None else f"{'-':>9}"

    print(f"\n{'system':<22}{'workload':<11}{'rate':>6}{'achieved':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'failed':>8}{'shed':>6}")
    rows = [(f"serve {path}", w, runs) for path, ws in report["serve"].items() for w, runs in ws.items()]
    rows.append(("handrolled", "search", report["handrolled"]["search"]))
    for system, w, runs in rows:
        for rate, r in runs.items():
            print(f"{system:<22}{w:<11}{rate:>6}{(r['achieved_rps'] or 0):10.1f}{f(r['p50_ms'])}{f(r['p95_ms'])}"
                  f"{f(r['p99_ms'])}{r['errors']:8d}{r['shed']:6d}")
    for path, ws in report["serve"].items():
        for w, runs in ws.items():
            for rate, r in runs.items():
                sp = r.get("server_split", {})
                if "inside" in sp:
                    print(f"serve {path} {w} {rate}/s: inside the Ingress p50 / p99 {sp['inside']['p50_ms']:.1f} / "
                          f"{sp['inside']['p99_ms']:.1f} ms, outside {sp['outside']['p50_ms']:.1f} / "
                          f"{sp['outside']['p99_ms']:.1f} ms; "
                          + ", ".join(f"{k[4:]} {v['p50_ms']:.1f} / {v['p99_ms']:.1f}" for k, v in sp.items()
                                      if k.startswith("hop ")))
    for ep, r in report["floor"].items():
        print(f"{'floor (in process)':<22}{ep:<24}one at a time: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
    print(f"handrolled configuration: {report['handrolled']['configuration']}")
    fr = report["freshness"]
    if fr.get("trials") and fr.get("p50_ms") is not None:
        print(f"freshness (ack -> visible in /v1/recommend): p50 {fr['p50_ms']:.1f} ms, p99 {fr['p99_ms']:.1f} ms, "
              f"{fr['not_visible_after_50_requests']} of {fr['trials']} never visible")
    else:
        print("freshness: not measured (--freshness-trials 0)")
    for name, t in report["targets"].items():
        print(f"  target {name}: {'MET' if t['met'] else 'MISSED'} {json.dumps({k: v for k, v in t.items() if k != 'met'})}")


if __name__ == "__main__":
    sys.exit(main())
