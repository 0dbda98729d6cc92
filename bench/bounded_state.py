"""Bounded online state under a stream of new event ids, and rate limits under rotating API keys.

    python -m bench.bounded_state [--artifacts artifacts] [--minutes 6] [--rate 20] [--batch 100] [--warm-up-s 150]

Two runs of the Serve app on a private 2-CPU Ray, one after the other, each fed the same
open-loop stream through the proxy: `--rate` requests/s of POST /v1/events with `--batch` events
each, every event with a new event_id (a client that never repeats: the worst case for the
de-duplication window), from a pool of 5,000 shoppers:

  bounded    profiles.limits: dedup_max_ids 20,000, log segments of 1 MiB, retention 0 s (a
             segment goes as soon as a snapshot covers it); a snapshot every 10,000 events (5 s)
  unbounded  dedup_max_ids 100,000,000 and no retention: every id and every segment kept, what
             the store did before it had limits

Every 5 s: the Profiles replica's resident memory, the ids in the window (/healthz), and the bytes
of the event log and the snapshot on disk. Growth: the mean of the last minute against the mean of
the minute after the warm-up (the profiles of the 5,000 shoppers fill their capped recent lists in
about 2 minutes, in both runs), and the slope after it; the unbounded run is the baseline of the
same run.

Then, on the bounded app (rate limit 50 requests/s, burst 100, one real API key): one address sends
1,000 requests as fast as it can, each with a new made-up key. Accepted must stay within
burst + rate x elapsed (one address's bucket), and the real key, from the same address right
after, is still served (its own bucket).

Writes bench/results/bounded_state.json with the commit. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.soak import RESULTS, rss_mb, serve_processes

KEY = "bench-bounded-key"


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


async def _stream(base: str, rate: float, batch: int, minutes: float, items: list[str], state: Path,
                  probe: Any) -> dict[str, Any]:
    import aiohttp

    rng = random.Random(0)
    sent = 0
    statuses: dict[str, int] = {}
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    stop = t0 + minutes * 60
    pending: set[asyncio.Task] = set()

    async def post(session: aiohttp.ClientSession, body: list[dict]) -> None:
        try:
            async with session.post(f"{base}/v1/events", json=body, headers={"X-API-Key": KEY}) as r:
                await r.read()
                code = str(r.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            code = type(e).__name__
        statuses[code] = statuses.get(code, 0) + 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        next_sample = t0
        while (now := time.monotonic()) < stop:
            body = [{"event_id": f"ev-{sent}-{i}", "user_id": f"bounded-shopper-{rng.randrange(5000)}",
                     "event_type": "view", "item_id": rng.choice(items)} for i in range(batch)]
            sent += 1
            task = asyncio.create_task(post(session, body))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if now >= next_sample:
                samples.append({"t_s": round(now - t0, 1), **probe(session is not None),
                                "log_bytes": _du(state / "profiles" / "events"),
                                "snapshot_bytes": _du(state / "profiles") - _du(state / "profiles" / "events")})
                next_sample += 5
            await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
        await asyncio.gather(*pending, return_exceptions=True)
    return {"requests": sent, "by_status": statuses, "events_sent": sent * batch, "samples": samples}


def _rotating_keys(base: str, n: int, rate: float, burst: int) -> dict[str, Any]:
    import requests

    session = requests.Session()
    t0 = time.monotonic()
    codes = [session.get(f"{base}/v1/items/85123A/similar?k=1", headers={"X-API-Key": f"made-up-{i}"},
                         timeout=30).status_code for i in range(n)]
    elapsed = time.monotonic() - t0
    real = session.get(f"{base}/v1/items/85123A/similar?k=1", headers={"X-API-Key": KEY}, timeout=30).status_code
    accepted = codes.count(200)
    return {"requests": n, "elapsed_s": round(elapsed, 2), "accepted": accepted, "refused_429": codes.count(429),
            "allowed_at_most": int(burst + rate * elapsed) + 1, "real_key_after": real,
            "passed": accepted <= burst + rate * elapsed + 1 and real == 200}


def _growth(samples: list[dict[str, Any]], key: str, since_s: float) -> dict[str, Any]:
    """The mean of the minute from `since_s` against the last minute's, and the slope after `since_s`."""
    ts = np.array([s["t_s"] for s in samples])
    v = np.array([s[key] or 0 for s in samples], dtype=float)
    early = v[(ts >= since_s) & (ts < since_s + 60)]
    late = v[ts >= ts.max() - 60]
    after = ts >= since_s
    slope = float(np.polyfit(ts[after] / 60, v[after], 1)[0]) if after.sum() >= 3 else None
    return {"after_warm_up": round(float(early.mean()), 1) if len(early) else None,
            "last_minute": round(float(late.mean()), 1) if len(late) else None,
            "growth_pct": round(100 * (late.mean() / early.mean() - 1), 2) if len(early) and early.mean() else None,
            "slope_per_min": round(slope, 3) if slope is not None else None}


def run_one(name: str, overrides: list[str], ns: argparse.Namespace) -> dict[str, Any]:
    import ray
    import requests
    from ray import serve

    from bench.faults import LocalServe
    from bench.serve_latency import wait_http
    from features.config import apply_overrides
    from features.data import schema as S
    from serving.app import build_app_with_options

    env = LocalServe(f"bench-bounded-{name}-", ns.artifacts)
    conf, state = env.conf, env.state
    conf["args"] = apply_overrides(conf["args"], overrides)
    opts = conf["deployment_options"]
    opts["Ingress"]["ray_actor_options"] = {**opts["Ingress"]["ray_actor_options"],
                                            "runtime_env": {"env_vars": {"INTENTLY_API_KEY": KEY}}}
    serve.run(build_app_with_options(conf["args"], opts), name="intently", route_prefix="/")
    base = f"http://127.0.0.1:{env.proxy}"
    wait_http(f"{base}/healthz", 300)

    def probe(_: bool) -> dict[str, Any]:
        pid = next((p for n, p in serve_processes().items() if "Profiles" in n), None)
        try:
            ids = requests.get(f"{base}/healthz", timeout=10).json()["profiles"]["logged_event_ids"]
        except (requests.RequestException, KeyError, ValueError):
            ids = None
        return {"profiles_rss_mb": round(rss_mb(pid), 1) if pid else None, "ids_in_window": ids}

    try:
        print(f"{name}: {ns.rate:g} requests/s x {ns.batch} new event ids for {ns.minutes:g} min", flush=True)
        out = asyncio.run(_stream(base, ns.rate, ns.batch, ns.minutes, env.items[S.ITEM_ID].to_list(), state, probe))
        out["rotating_keys"] = _rotating_keys(base, 1000, 50.0, 100) if name == "bounded" else None
        out["overrides"] = overrides
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(state, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, kind, default in (("--artifacts", str, "artifacts"), ("--minutes", float, 6.0), ("--rate", float, 20.0),
                                ("--batch", int, 100), ("--warm-up-s", float, 150.0),
                                ("--out", str, str(RESULTS / "bounded_state.json"))):
        ap.add_argument(flag, type=kind, default=default)
    ns = ap.parse_args(argv)
    from features import artifacts as A

    common = ["profiles.snapshot_every_events=10000", "rate_limit.requests_per_s=50", "rate_limit.burst=100"]
    runs = {
        "bounded": run_one("bounded", common + ["profiles.limits.dedup_max_ids=20000",
                                                "profiles.limits.log_segment_bytes=1048576",
                                                "profiles.limits.log_retention_s=0"], ns),
        "unbounded": run_one("unbounded", common + ["profiles.limits.dedup_max_ids=100000000",
                                                    "profiles.limits.log_retention_s=null"], ns),
    }
    fill_s = 20_000 / (ns.rate * ns.batch)  # when the bounded window is full
    # Profiles grow until every shopper's recent lists reach their caps (about 2 minutes at the
    # default rate); growth is measured from the warm-up on, the same for both runs.
    warm_up_s = max(fill_s, ns.warm_up_s)
    report: dict[str, Any] = {"commit": A.git_commit(), "rate_rps": ns.rate, "events_per_request": ns.batch,
                              "minutes": ns.minutes, "window_full_after_s": round(fill_s, 1), "warm_up_s": warm_up_s}
    for name, r in runs.items():
        r["growth"] = {k: _growth(r["samples"], k, warm_up_s) for k in
                       ("profiles_rss_mb", "ids_in_window", "log_bytes", "snapshot_bytes")}
    report["runs"] = runs
    b, u = runs["bounded"]["growth"], runs["unbounded"]["growth"]
    report["summary"] = {
        "bounded_profiles_rss_growth_pct": b["profiles_rss_mb"]["growth_pct"],
        "unbounded_profiles_rss_growth_pct": u["profiles_rss_mb"]["growth_pct"],
        "bounded_profiles_rss_mb_per_min": b["profiles_rss_mb"]["slope_per_min"],
        "unbounded_profiles_rss_mb_per_min": u["profiles_rss_mb"]["slope_per_min"],
        "bounded_statuses": runs["bounded"]["by_status"], "unbounded_statuses": runs["unbounded"]["by_status"],
        "bounded_ids_in_window_last_minute": b["ids_in_window"]["last_minute"],
        "unbounded_ids_in_window_last_minute": u["ids_in_window"]["last_minute"],
        "bounded_log_mb_last_minute": round((b["log_bytes"]["last_minute"] or 0) / 2**20, 2),
        "unbounded_log_mb_last_minute": round((u["log_bytes"]["last_minute"] or 0) / 2**20, 2),
        "rotating_keys": runs["bounded"]["rotating_keys"],
    }
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["summary"], indent=1))
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
