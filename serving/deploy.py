"""`make serve`: deploy serving/config.yaml with `serve deploy` on the local cluster and wait for it.

    python -m serving.deploy [--artifacts DIR] [--state DIR] [--set key=value ...]
    python -m serving.deploy --demo          # then send a few real requests and print the answers

The config is rendered with absolute paths to state/serve_config.yaml (the replicas do not run in
the repository folder), then handed to `serve deploy`; the command returns once /healthz answers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from features.config import apply_overrides
from serving.app import CONFIG


def render(artifacts: str, state: str, overrides: list[str], out: Path) -> tuple[Path, str]:
    conf = yaml.safe_load(CONFIG.read_text())
    app = conf["applications"][0]
    app["args"] = apply_overrides(app.get("args") or {}, [f"artifacts_root={Path(artifacts).resolve()}",
                                                          f"state_dir={Path(state).resolve()}", *overrides])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(conf, sort_keys=False))
    http = conf.get("http_options", {})
    return out, f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"


def direct_url(base: str) -> str | None:
    """The first Ingress replica's own address under direct ingress, if it is on."""
    port = os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT")
    if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") != "1" or not port:
        return None
    return base.rsplit(":", 1)[0] + f":{port}"


def _call(url: str, method: str = "GET", body: object | None = None, timeout_s: float = 10.0) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    key = os.environ.get("INTENTLY_API_KEY")
    if key:
        req.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _deploy_failure(address: str, env: dict) -> str | None:
    """The message of a failed deployment from `serve status`, or None while it is not failed."""
    serve_bin = Path(sys.executable).parent / "serve"
    out = subprocess.run([str(serve_bin), "status", "--address", address], env=env, capture_output=True, text=True)
    try:
        apps = (yaml.safe_load(out.stdout) or {}).get("applications", {})
    except yaml.YAMLError:
        return None
    for name, app in apps.items():
        if app.get("status") == "DEPLOY_FAILED":
            return f"application {name!r} failed to deploy:\n{app.get('message', '')}"
    return None


def wait_healthy(base: str, address: str, env: dict, timeout_s: float = 600.0) -> dict:
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout_s:
        failure = _deploy_failure(address, env)
        if failure:
            raise RuntimeError(failure)
        try:
            status, body = _call(f"{base}/healthz", timeout_s=5)
            if status == 200:
                return body  # type: ignore[return-value]
            last = f"HTTP {status}: {body}"
        except (OSError, ValueError) as e:
            last = str(e)
        print(f"  waiting for {base}/healthz ({time.monotonic() - t0:.0f}s) {last[:120]}", flush=True)
        time.sleep(5)
    raise TimeoutError(f"{base}/healthz not healthy after {timeout_s:.0f}s; last answer: {last}. "
                       "See `serve status` and /tmp/ray/session_latest/logs/serve/")


def demo(base: str) -> None:
    """A few real requests against the bundled catalog, printed as a shopper would see them."""
    def show(title: str, status: int, body: object) -> None:
        print(f"\n== {title} -> HTTP {status}")
        if isinstance(body, dict) and "results" in body:
            for r in body["results"]:
                print(f"  {r['score']:7.3f}  {r['item_id']:>8}  {r['title'][:40]:40}  {'; '.join(r['reasons'])}")
            print(f"  ({body.get('took_ms')} ms, user_known={body.get('user_known')})")
        else:
            print("  " + json.dumps(body)[:400])

    show('search "lunch bag"', *_call(f"{base}/v1/search", "POST", {"query": "lunch bag", "k": 5}))
    show('search "christmas lights" under 3.00', *_call(f"{base}/v1/search", "POST",
         {"query": "christmas lights", "k": 5, "filters": {"price_max": 3.0}}))
    show("recommend for customer c12347 (history from the log)", *_call(f"{base}/v1/recommend", "POST",
         {"user_id": "c12347", "k": 5}))
    show("recommend for a new shopper (cold start)", *_call(f"{base}/v1/recommend", "POST",
         {"user_id": "demo-shopper", "k": 5}))
    show("the new shopper views a cake stand", *_call(f"{base}/v1/events", "POST",
         [{"user_id": "demo-shopper", "event_type": "view", "item_id": "22423"}]))
    show("recommend for the new shopper, a moment later", *_call(f"{base}/v1/recommend", "POST",
         {"user_id": "demo-shopper", "k": 5}))
    show("a bad request (k too large)", *_call(f"{base}/v1/search", "POST", {"query": "mug", "k": 100000}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Deploy the intently Serve app on the running local cluster.")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--state", default="state")
    ap.add_argument("--address", default="http://127.0.0.1:8265", help="the cluster's dashboard (serve deploy)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an app arg")
    ap.add_argument("--demo", action="store_true", help="send a few requests once healthy")
    ns = ap.parse_args(argv)
    overrides = list(ns.set)
    if ns.demo and not os.environ.get("INTENTLY_API_KEY"):
        overrides.insert(0, "allow_anonymous_writes=true")  # the local demo logs an event without a key
    path, base = render(ns.artifacts, ns.state, overrides, Path(ns.state) / "serve_config.yaml")
    print(f"serve deploy {path} (address {ns.address})", flush=True)
    serve_bin = Path(sys.executable).parent / "serve"
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"))
    proc = subprocess.run([str(serve_bin), "deploy", str(path), "--address", ns.address], env=env)
    if proc.returncode != 0:
        print("serve deploy failed; is the cluster up (`make ray-up`)?", file=sys.stderr)
        return proc.returncode
    health = wait_healthy(base, ns.address, env)
    print(f"\nintently is serving on {base}  (OpenAPI docs: {base}/docs, metrics: {base}/metrics)")
    fast = direct_url(base)
    if fast:
        print(f"  fast path without the proxy hop: {fast} (moves if the Ingress replica is replaced)")
    print(f"  versions: {health['versions']}")
    print(f"  writes {health['writes']}")
    if ns.demo:
        demo(base)
        print(f"\nThe server keeps running on {base}; stop it with `make ray-down`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
