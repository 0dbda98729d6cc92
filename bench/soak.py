"""Soak: a steady mixed load for minutes, watching errors, tail latency and every replica's memory.

    python -m bench.soak [--artifacts artifacts] [--rate 50] [--minutes 10] [--window-s 30]

A local 2-CPU Ray runs the Serve app (serving/config.yaml's options, throughput mode, a fresh
state dir). An open-loop client (bench/faults.py's) sends search 40%, recommend 30%, events 30%
through the Serve proxy; events come from a fixed pool of 2,000 shoppers, so a profile store
that grows without bound shows up as growth, not as new users. Every 10 s the resident memory
(VmRSS from /proc: Linux) of each Serve replica, the controller and the proxy is sampled.
Per window: requests, requests shed (503 from the Ingress's in-flight limit: refused at once,
nothing done, Retry-After), client timeouts, other errors, p50/p99 of the answered ones. Memory
growth per process: the mean of the last 2 minutes against the mean of minutes 2-4 (after
warm-up), and the least-squares slope.

Writes bench/results/soak.json and soak.svg (p99 and memory over time). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from features.artifacts import git_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


_NAMES: dict[int, str] = {}  # pid -> the stable name it was first seen with


def serve_processes() -> dict[str, int]:
    """name -> pid of every Serve replica, the controller and the proxy (from /proc cmdlines).

    A Ray worker's title changes with the method it runs ("...Ingress.handle_request"), so a
    process keeps the name it was first seen with: the deployment (plus the pid, as replicas of
    one deployment come and go)."""
    out: dict[str, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if not cmd.startswith(("ray::", "SERVE_REPLICA::")):
            continue
        pid = int(d.name)
        if pid not in _NAMES:
            for tag in ("ServeReplica:intently:", "ServeController", "ProxyActor"):
                if tag in cmd:
                    rest = cmd[cmd.index(tag):]
                    _NAMES[pid] = f"{rest.split('.')[0].split()[0]} (pid {pid})"
                    break
        if pid in _NAMES:
            out[_NAMES[pid]] = pid
    return out


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def windows(log: list[tuple[float, str, int, float]], t0: float, width: float) -> list[dict[str, Any]]:
    out = []
    end = max(x[0] for x in log) if log else t0
    t = t0
    while t < end:
        w = [x for x in log if t <= x[0] < t + width]
        ok = sorted(x[3] for x in w if x[2] == 200)
        out.append({"t_s": round(t - t0, 1), "requests": len(w), "shed_503": sum(1 for x in w if x[2] == 503),
                    "timeouts": sum(1 for x in w if x[2] == 0),
                    "errors": sum(1 for x in w if x[2] not in (200, 503)),
                    "p50_ms": round(1e3 * ok[len(ok) // 2], 1) if ok else None,
                    "p99_ms": _p99(ok)})
        t += width
    return out


def _p99(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return round(1e3 * xs[int(0.99 * (len(xs) - 1))], 1) if xs else None


def growth(samples: list[tuple[float, float]], t0: float) -> dict[str, Any]:
    """Memory after warm-up: mean of minutes 2-4 vs the last 2 minutes, and the slope."""
    ts = np.array([s[0] - t0 for s in samples])
    mb = np.array([s[1] for s in samples])
    early = mb[(ts >= 120) & (ts < 240)]
    late = mb[ts >= ts.max() - 120]
    warm = ts >= 120
    slope = float(np.polyfit(ts[warm] / 60, mb[warm], 1)[0]) if warm.sum() >= 3 else None
    return {"start_mb": round(float(mb[0]), 1), "max_mb": round(float(mb.max()), 1),
            "mean_min2_4_mb": round(float(early.mean()), 1) if len(early) else None,
            "mean_last2min_mb": round(float(late.mean()), 1) if len(late) else None,
            "growth_pct": round(100 * (late.mean() / early.mean() - 1), 2) if len(early) and len(late) else None,
            "slope_mb_per_min": round(slope, 3) if slope is not None else None}


def plot(report: dict[str, Any]) -> str:
    from features.evaluation.report import line_chart

    win = report["windows"]
    xs = [int(w["t_s"] // 60) if w["t_s"] % 60 == 0 else round(w["t_s"] / 60, 1) for w in win]
    p99 = line_chart("p99 latency per 30 s window (ms) over minutes", xs,
                     {"p99": [w["p99_ms"] or 0.0 for w in win], "p50": [w["p50_ms"] or 0.0 for w in win]}, "ms",
                     w=900)
    mem = report["memory_samples"]
    times = sorted({round(t / 60, 1) for series in mem.values() for t, _ in series})
    step = max(1, len(times) // 30)
    picked = times[::step]
    series = {}
    for name, points in mem.items():
        lookup = {round(t / 60, 1): v for t, v in points}
        series[name.replace("ServeReplica:intently:", "")[:40]] = [lookup.get(t, 0.0) for t in picked]
    rss = line_chart("resident memory per process (MB) over minutes", picked, series, "MB", w=900, h=360)
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='900' height='700'><g>{p99}</g><g transform='translate(0,320)'>{rss}</g></svg>"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--window-s", type=float, default=30.0)
    ap.add_argument("--out", default=str(RESULTS / "soak.json"))
    ns = ap.parse_args(argv)
    from bench.faults import Load, LocalServe
    from bench.serve_latency import wait_http

    env = LocalServe("bench-soak-state-", ns.artifacts)
    import ray
    import requests
    from ray import serve

    from features.data import schema as S
    from serving.app import build_app_with_options

    conf, state, proxy, items, users, queries = env.conf, env.state, env.proxy, env.items, env.users, env.queries
    serve.run(build_app_with_options(conf["args"], conf["deployment_options"]), name="intently", route_prefix="/")
    base = f"http://127.0.0.1:{proxy}"
    wait_http(f"{base}/healthz", 180)
    load = Load(base, ns.rate, queries, items[S.ITEM_ID].to_list(), users,
                event_users=[f"soak-shopper-{i}" for i in range(2000)])
    samples: dict[str, list[tuple[float, float]]] = {}
    report: dict[str, Any] = {"commit": git_commit(), "via": "proxy", "rate_rps": ns.rate, "minutes": ns.minutes,
                              "mix": "search 40%, recommend 30%, events 30% (2,000 shoppers)"}

    async def scenario() -> float:
        t0 = time.monotonic()
        runner = asyncio.create_task(load.run())
        while time.monotonic() - t0 < ns.minutes * 60:
            now = time.monotonic()
            for name, pid in serve_processes().items():
                mb = rss_mb(pid)
                if mb is not None:
                    samples.setdefault(name, []).append((now, mb))
            done = int(now - t0)
            if done % 60 < 10:
                recent = [x for x in load.log if x[0] >= now - 10]
                errs = sum(1 for x in recent if x[2] not in (200, 503))
                shed = sum(1 for x in recent if x[2] == 503)
                print(f"  t={done:4d}s sent {len(load.log):,}, last 10 s: {len(recent)} requests, {shed} shed, "
                      f"{errs} errors", flush=True)
            await asyncio.sleep(10)
        load.stop = True
        await runner
        return t0

    try:
        t0 = asyncio.run(scenario())
        health = requests.get(f"{base}/healthz", timeout=30).json()
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(state, ignore_errors=True)
    log = load.log
    ok = sorted(x[3] for x in log if x[2] == 200)
    statuses: dict[str, int] = {}
    for x in log:
        statuses[str(x[2])] = statuses.get(str(x[2]), 0) + 1
    n = max(len(log), 1)
    report["requests"] = {"sent": len(log), "achieved_rps": round(len(log) / (ns.minutes * 60), 1),
                          "served_rps": round(statuses.get("200", 0) / (ns.minutes * 60), 1),
                          "by_status": statuses,
                          # shed: refused at once by the in-flight limit (503 + Retry-After, nothing done)
                          "shed_rate": round(statuses.get("503", 0) / n, 5), "shed_overloaded_503": load.shed,
                          "client_timeouts": statuses.get("0", 0),
                          "error_rate": round(sum(1 for x in log if x[2] not in (200, 503)) / n, 5),
                          "shed_p99_ms": _p99([x[3] for x in log if x[2] == 503]),
                          "p50_ms": round(1e3 * ok[len(ok) // 2], 1) if ok else None,
                          "p99_ms": _p99(ok),
                          "bodies_of_500s": load.errors_500}
    report["windows"] = windows(log, t0, ns.window_s)
    report["memory"] = {name: growth(s, t0) for name, s in samples.items()}
    report["memory_samples"] = {name: [(round(t - t0, 1), round(v, 1)) for t, v in s] for name, s in samples.items()}
    report["acknowledged_events"] = {"acknowledged": len(load.acked), "logged_event_ids": health["profiles"]["logged_event_ids"]}
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(report, indent=1))
    Path(ns.out).with_suffix(".svg").write_text(plot(report))
    print(json.dumps({k: v for k, v in report.items() if k not in ("memory_samples", "windows")}, indent=1))
    print(f"wrote {ns.out} and {Path(ns.out).with_suffix('.svg')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
