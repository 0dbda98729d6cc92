"""Fault injection under steady load: kill a replica of each deployment, then the whole app.

    python -m bench.faults [--artifacts artifacts] [--rate 20] [--settle-s 20] [--no-retry]

A local 2-CPU Ray runs the Serve app (serving/config.yaml's options, throughput mode, a fresh
state dir). An open-loop client sends a steady mix (search 40%, recommend 30%, events 30%; every
event carries an event_id and names a fresh shopper) the whole time; like a well-behaved client it
sends a request refused with 503/429 + Retry-After once more after that wait (--no-retry: never).
Then, one at a time: ray.kill on the replica actor of each deployment (Serve notices and starts a
new one), and finally serve.delete + serve.run of the whole application on the same state dir (a
restart). For each fault: requests failed at the first attempt and after the retry, their
statuses, the outage window (fault -> last failed request), and the slowest answers (requests
queue while Serve replaces a replica, until the Ingress's in-flight limit sheds them). At the end
every acknowledged event is checked: it must be in the log (the Profiles replica's count of
logged event ids) and reflected in its shopper's profile (/v1/recommend says user_known=true).

Loopback only, bounded in time. Writes bench/results/faults.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from features.artifacts import git_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEPLOYMENTS = ("QueryEncoder", "Retriever", "Profiles", "Ingress")


class Load:
    """Open-loop mixed traffic; records (sent_at, endpoint, status) and acknowledged events."""

    def __init__(self, base: str, rate: float, queries: list[str], items: list[str], users: list[str],
                 event_users: list[str] | None = None, retry_once: bool = False) -> None:
        self.base, self.rate = base, rate
        # retry_once: like a well-behaved client, a 503/429 with Retry-After is sent once more after
        # that wait (events keep their event_id, so a retry is de-duplicated); the log keeps the
        # final status, `first_attempt` every first answer's status.
        self.retry_once = retry_once
        self.first_attempt: dict[str, int] = {}
        self.retried = 0
        self.event_users = event_users  # None: every event names a fresh shopper
        self.queries, self.items, self.users = queries, items, users
        # (sent at, endpoint, final status, latency s incl. a retry, first attempt's status)
        self.log: list[tuple[float, str, int, float, int]] = []
        self.acked: dict[str, str] = {}  # event_id -> user_id
        self.errors_500: list[str] = []  # bodies of 500 answers (a 500 is a bug; keep the evidence)
        self.shed = 0  # 503s from the Ingress's in-flight limit (load shedding), told apart by their body
        self.stop = False
        self.rng = random.Random(0)
        self.n = 0

    async def one(self, session: Any) -> None:

        r = self.rng.random()
        self.n += 1
        if r < 0.4:
            ep, body = "search", {"query": self.rng.choice(self.queries), "k": 10}
        elif r < 0.7:
            ep, body = "recommend", {"user_id": self.rng.choice(self.users), "k": 10}
        else:
            user = self.rng.choice(self.event_users) if self.event_users else f"fault-shopper-{self.n}"
            eid = f"fault-ev-{self.n}"
            ep, body = "events", [{"event_id": eid, "user_id": user, "event_type": "view",
                                   "item_id": self.rng.choice(self.items)}]
        t = time.monotonic()
        status, retry_after = await self._send(session, ep, body)
        first = status
        self.first_attempt[str(status)] = self.first_attempt.get(str(status), 0) + 1
        if self.retry_once and status in (429, 503) and retry_after is not None:
            self.retried += 1
            await asyncio.sleep(min(retry_after, 5.0))
            status, _ = await self._send(session, ep, body)
        if ep == "events" and status == 200:
            self.acked[body[0]["event_id"]] = body[0]["user_id"]
        self.log.append((t, ep, status, time.monotonic() - t, first))

    async def _send(self, session: Any, ep: str, body: Any) -> tuple[int, float | None]:
        """(status, Retry-After seconds or None); status 0: refused, reset or timed out."""
        import aiohttp

        try:
            async with session.post(f"{self.base}/v1/{ep}", json=body) as resp:
                text = await resp.read()
                if resp.status == 500 and len(self.errors_500) < 20:
                    self.errors_500.append(f"{ep}: {text[:300]!r}")
                if resp.status == 503 and b"overloaded" in text:
                    self.shed += 1
                ra = resp.headers.get("Retry-After")
                return resp.status, float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return 0, None

    async def run(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=10)) as session:
            start, i, tasks = time.monotonic(), 0, []
            while not self.stop:
                due = start + i / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                tasks.append(asyncio.create_task(self.one(session)))
                i += 1
            await asyncio.gather(*tasks)


def _ok(status: int) -> bool:
    """Every request of the mix is valid, so anything but a 200 is a failure: no answer (0), a 5xx,
    or the proxy's 404 while the application is gone during a restart."""
    return status == 200


def recovery(log: list[tuple[float, str, int, float]], t_fault: float, t_end: float) -> dict[str, Any]:
    """What the requests sent between the fault and t_end saw: failures, the outage window (from
    the fault to the last failed request), and the slowest answers (requests queue while Serve
    replaces a replica)."""
    window = sorted(x for x in log if t_fault <= x[0] < t_end)
    failed = [x for x in window if not _ok(x[2])]
    statuses: dict[str, int] = {}
    for x in failed:
        statuses[str(x[2])] = statuses.get(str(x[2]), 0) + 1
    lat = sorted(x[3] for x in window if _ok(x[2]))
    first = [x for x in window if not _ok(x[4])]
    return {"requests": len(window), "failed_requests": len(failed), "failed_by_status": statuses,
            "failed_first_attempt": len(first), "retried_after_retry_after": sum(1 for x in first if x[4] in (429, 503)),
            "outage_s": round(failed[-1][0] - t_fault, 2) if failed else 0.0,
            "max_latency_s": round(lat[-1], 2) if lat else None,
            "p99_latency_s": round(lat[int(0.99 * (len(lat) - 1))], 3) if lat else None}


class LocalServe:
    """A private 2-CPU Ray with Serve started (proxy on a free port), the app's config for a
    fresh state dir, and request material from the resolved features version."""

    def __init__(self, state_prefix: str, artifacts: str, ingress: str = "haproxy") -> None:
        from bench.serve_latency import free_port, ingress_env

        self.direct = free_port()
        os.environ.update(ingress_env(ingress, self.direct), HF_HUB_OFFLINE="1")
        import polars as pl
        import ray
        from ray import serve

        from features import artifacts as A
        from features.data import schema as S
        from serving.app import load_serve_config
        from serving.settings import ServingConfig, resolve

        self.state = Path(tempfile.mkdtemp(prefix=state_prefix))
        self.conf = load_serve_config(overrides=[f"artifacts_root={Path(artifacts).resolve()}", f"state_dir={self.state}",
                                                    "allow_anonymous_writes=true"])  # loopback-only bench
        res = resolve(ServingConfig.from_args(self.conf["args"]))
        self.items = pl.read_parquet(A.join(res.features_dir, "items"), columns=[S.ITEM_ID, S.TITLE])
        self.users = pl.read_parquet(A.join(res.features_dir, "users"), columns=[S.USER_ID])[S.USER_ID].head(300).to_list()
        self.queries = [" ".join(t.lower().split()[:2]) for t in self.items[S.TITLE].to_list()[:500]]
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        self.proxy = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": self.proxy})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--settle-s", type=float, default=20.0, help="load time after each fault")
    ap.add_argument("--via", choices=("proxy", "direct"), default="proxy",
                    help="send the load to the stable URL or straight to the Ingress replica")
    ap.add_argument("--ingress", choices=("haproxy", "proxy"), default="haproxy",
                    help="what serves the stable URL: Ray Serve's HAProxy mode (make serve's default) or its Python proxy")
    ap.add_argument("--no-retry", action="store_true",
                    help="do not retry a 503/429 once after its Retry-After (the default does, like a client should)")
    ap.add_argument("--out", default=str(RESULTS / "faults.json"))
    ns = ap.parse_args(argv)
    import ray
    from ray import serve

    from serving.app import build_app_with_options

    env = LocalServe("bench-faults-state-", ns.artifacts, ns.ingress)
    conf, state, proxy, direct = env.conf, env.state, env.proxy, env.direct
    items, users, queries = env.items, env.users, env.queries
    from bench.serve_latency import wait_http
    from features.data import schema as S

    def deploy() -> None:
        serve.run(build_app_with_options(conf["args"], conf["deployment_options"]), name="intently", route_prefix="/")

    deploy()
    base = f"http://127.0.0.1:{proxy if ns.via == 'proxy' else direct}"
    wait_http(f"{base}/healthz", 180)
    report: dict[str, Any] = {"commit": git_commit(), "via": ns.via, "ingress": ns.ingress, "rate_rps": ns.rate, "settle_s": ns.settle_s,
                              "retry_once": not ns.no_retry,
                              "mix": "search 40%, recommend 30%, events 30%",
                              "faults": {}}
    load = Load(base, ns.rate, queries, items[S.ITEM_ID].to_list(), users, retry_once=not ns.no_retry)

    async def scenario() -> None:
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(ns.settle_s)  # steady state first
        for name in DEPLOYMENTS:
            actors = [a for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["namespace"] == "serve" and f"#{name}#" in a["name"]]
            t_fault = time.monotonic()
            ray.kill(ray.get_actor(actors[0]["name"], namespace="serve"), no_restart=True)
            print(f"killed a {name} replica ({actors[0]['name']})", flush=True)
            await asyncio.sleep(ns.settle_s)
            report["faults"][f"kill {name} replica"] = recovery(load.log, t_fault, time.monotonic())
            print(f"  {report['faults'][f'kill {name} replica']}", flush=True)
        t_fault = time.monotonic()
        await asyncio.to_thread(serve.delete, "intently")
        await asyncio.to_thread(deploy)
        print("restarted the whole application", flush=True)
        await asyncio.sleep(ns.settle_s)
        report["faults"]["restart the whole app (serve.delete + serve.run)"] = recovery(load.log, t_fault,
                                                                                        time.monotonic())
        print(f"  {report['faults']['restart the whole app (serve.delete + serve.run)']}", flush=True)
        load.stop = True
        await runner

    try:
        asyncio.run(scenario())
        from serving.client import Client

        client = Client(base, timeout_s=30)  # after the faults: retries 503 while replicas come back
        health = client.health()["profiles"]
        missing = [eid for eid, user in load.acked.items() if not client.recommend(user, k=1)["user_known"]]
        report["acknowledged_events"] = {
            "acknowledged": len(load.acked), "logged_event_ids_after": health["logged_event_ids"],
            "in_log": health["logged_event_ids"] >= len(load.acked),
            # events whose reply was lost to a fault (they reached the log; a retry with the same
            # event_id is de-duplicated)
            "logged_but_not_acknowledged": health["logged_event_ids"] - len(load.acked),
            "acknowledged_but_not_in_a_profile": len(missing), "torn_tail": health["torn_tail"]}
        counts: dict[str, int] = {}
        for _, ep, status, *_ in load.log:
            counts[f"{ep} {status}"] = counts.get(f"{ep} {status}", 0) + 1
        report["requests"] = {"sent": len(load.log), "by_endpoint_and_status": counts,
                              "first_attempt_by_status": load.first_attempt, "retried_once": load.retried,
                              "shed_overloaded_503": load.shed,
                              "bodies_of_500s": load.errors_500}
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(state, ignore_errors=True)
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {ns.out}")
    return 0 if report["acknowledged_events"]["acknowledged_but_not_in_a_profile"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
