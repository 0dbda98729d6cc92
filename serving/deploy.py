"""`make serve`: deploy serving/config.yaml with `serve deploy` on the local cluster and wait for it.

    python -m serving.deploy [--artifacts DIR] [--state DIR] [--set key=value ...]
    python -m serving.deploy --demo          # then send a few real requests and print the answers

The config is rendered with absolute paths to state/serve_config.yaml (the replicas do not run in
the repository folder) and sized to the cluster's CPUs (serving/sizing.py; asked of the cluster's
dashboard, or --cpus N), then handed to `serve deploy`; the command returns once /healthz answers.
Serve rebuilds an application only when its config changes, and the config names artifacts as
"latest"; so the rendered args also carry `revision`, the newest complete version of each artifact
kind and the code's commit, and a deploy after a job wrote a newer version, or after an upgrade,
loads it (the same artifacts and code: nothing restarts).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import yaml

from features.config import apply_overrides
from serving import shop_state
from serving.app import CONFIG
from serving.client import ApiError, Client


def render(artifacts: str, state: str, overrides: list[str], out: Path, http_port: int | None = None,
           cpus: int | str | None = "auto") -> tuple[Path, str]:
    from features import artifacts as A
    from serving import sizing

    conf, chosen = sizing.size(yaml.safe_load(CONFIG.read_text()), sizing.parse_cpus(cpus))
    print(f"sizing: {json.dumps(chosen)}", flush=True)
    app = conf["applications"][0]
    root = artifacts if A.is_uri(artifacts) else str(Path(artifacts).resolve())
    app["args"] = apply_overrides(app.get("args") or {}, [f"artifacts_root={root}", f"state_dir={Path(state).resolve()}",
                                                          f"revision={artifact_revision(root)}", *overrides])
    if http_port is not None:
        conf.setdefault("http_options", {})["port"] = http_port
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(conf, sort_keys=False))
    http = conf.get("http_options", {})
    return out, f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"


REVISION_KINDS = ("features", "encoder", "index", "search", "sequence", "ranker")


def artifact_revision(root: str) -> str:
    """The newest complete version of each artifact kind under `root` ("index=<version>,...";
    "-" for a kind with none): what "latest" means at this deploy; and the code's commit, since the
    replicas import the code from disk when they start (an upgrade is loaded too)."""
    from features import artifacts as A

    newest = {kind: A.latest_complete(root, kind) for kind in REVISION_KINDS}
    return ",".join([*(f"{kind}={v.rstrip('/').rsplit('/', 1)[-1] if v else '-'}" for kind, v in newest.items()),
                     f"code={(A.git_commit() or '-')[:12]}"])


KUBERAY_HEADER = """\
# intently's Serve app as a KubeRay RayService: the Serve config is serving/config.yaml with the
# artifacts read from S3 (the newest complete versions the pipeline's RayJob wrote) and the proxy on
# every interface. Generated: `make kuberay` (python -m serving.deploy --kuberay ...); edit
# serving/config.yaml, not this file. Checked against KubeRay's CRD schema and Ray Serve's own
# config schema by tests/unit/test_deploy_manifests.py.
#   kubectl apply -f deploy/kuberay/rayservice.yaml
#   kubectl port-forward svc/intently-serve-svc 8000   # the stable URL
"""


def render_rayservice(artifacts: str, state: str, image: str) -> str:
    """The RayService manifest for serving/config.yaml with these artifacts and state folders."""
    conf = yaml.safe_load(CONFIG.read_text())
    conf["http_options"] = {**conf.get("http_options", {}), "host": "0.0.0.0"}
    app = conf["applications"][0]
    app["args"] = apply_overrides(app.get("args") or {}, [f"artifacts_root={artifacts}", f"state_dir={state}"])
    pod = lambda name, cpu, mem, ports=None: {"spec": {  # noqa: E731
        "serviceAccountName": "intently",
        "containers": [{"name": name, "image": image,
                        "resources": {"requests": {"cpu": cpu, "memory": mem}, "limits": {"cpu": cpu, "memory": mem}},
                        **({"ports": ports} if ports else {})}]}}
    manifest = {
        "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "intently"},
        "spec": {
            "serveConfigV2": yaml.safe_dump(conf, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": "2.60.0",
                "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "4"},
                                  "template": pod("ray-head", "4", "16Gi", [
                                      {"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                                      {"containerPort": 8000, "name": "serve"}])},
                "workerGroupSpecs": [{"groupName": "serve", "replicas": 1, "minReplicas": 1, "maxReplicas": 4,
                                      "rayStartParams": {"num-cpus": "4"}, "template": pod("ray-worker", "4", "16Gi")}],
            },
        },
    }
    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))
    return KUBERAY_HEADER + yaml.dump(manifest, Dumper=Dumper, sort_keys=False, width=120)


def direct_url(base: str) -> str | None:
    """The first Ingress replica's own address under direct ingress, if it is on."""
    port = os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT")
    if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") != "1" or not port:
        return None
    return base.rsplit(":", 1)[0] + f":{port}"


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


def wait_healthy(base: str, address: str, env: dict, timeout_s: float = 600.0, revision: str | None = None) -> dict:
    """/healthz of the deployed app; with `revision`, of the app deployed with it (while Serve replaces
    the replicas, the previous deployment's keep answering)."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout_s:
        failure = _deploy_failure(address, env)
        if failure:
            raise RuntimeError(failure)
        try:
            health = Client(base, timeout_s=5, max_wait_s=0).health()
            if revision is None or health.get("revision") == revision:
                return health
            last = "the previous deployment still answers (its replicas are being replaced)"
        except ApiError as e:
            last = f"HTTP {e.status}: {e.body}" if e.status else str(e.body)
        except (OSError, ValueError) as e:
            last = str(e)
        print(f"  waiting for {base}/healthz ({time.monotonic() - t0:.0f}s) {last[:120]}", flush=True)
        time.sleep(5)
    raise TimeoutError(f"{base}/healthz not healthy after {timeout_s:.0f}s; last answer: {last}. "
                       "See `serve status` and /tmp/ray/session_latest/logs/serve/")


def sample_requests(artifacts: str) -> dict:
    """Requests that mean something on this shop's data: a query from its most popular item's
    title, its most active shopper, that item to view. Read from the features version the newest
    index was built from."""
    import polars as pl

    from features import artifacts as A
    from features.data import schema as S
    from features.data.text import title_query

    index = A.latest_complete(artifacts, "index")
    features = index and A.read_manifest(index).get("inputs", {}).get("features", {}).get("path")
    if not features:
        raise FileNotFoundError(f"no complete index under {artifacts}/index")
    items = A.read_parquet(A.join(features, "items"), columns=[S.ITEM_ID, S.TITLE, S.N_USERS, S.PRICE])
    items = items.sort([S.N_USERS, S.ITEM_ID], descending=[True, False], nulls_last=True)
    top = items.row(0, named=True)
    # The most active returning shopper: most sessions, then the longest recent history.
    users = A.read_parquet(A.join(features, "users"), columns=[S.USER_ID, S.N_SESSIONS, S.RECENT_ITEMS])
    users = users.with_columns(pl.col(S.RECENT_ITEMS).list.len().alias("__n")).sort(
        [S.N_SESSIONS, "__n", S.USER_ID], descending=[True, True, False], nulls_last=True)
    prices = items.get_column(S.PRICE).drop_nulls()
    return {"query": title_query(top[S.TITLE]), "user_id": users[S.USER_ID][0] if users.height else None,
            "item_id": top[S.ITEM_ID], "item_title": top[S.TITLE],
            "price_max": float(prices.median()) if prices.len() else None}


def demo(base: str, artifacts: str) -> None:
    """A few real requests, chosen from the shop's own data, printed as a shopper would see them."""
    client = Client(base, max_wait_s=10)
    sample = sample_requests(artifacts)

    def show(title: str, fn) -> None:
        try:
            status, body = 200, fn()
        except ApiError as e:
            status, body = e.status, e.body
        print(f"\n== {title} -> HTTP {status}")
        if isinstance(body, dict) and "results" in body:
            for r in body["results"]:
                print(f"  {r['score']:7.3f}  {r['item_id']:>10}  {str(r['title'])[:40]:40}  {'; '.join(r['reasons'])}")
            print(f"  ({body.get('took_ms')} ms, user_known={body.get('user_known')})")
        else:
            print("  " + json.dumps(body)[:400])

    q, user, item = sample["query"], sample["user_id"], sample["item_id"]
    show(f"search {q!r}", lambda: client.search(q, k=5))
    if sample["price_max"] is not None:
        show(f"search {q!r} at most {sample['price_max']:.2f}",
             lambda: client.search(q, k=5, filters={"price_max": sample["price_max"]}))
    if user:
        show(f"recommend for {user} (the most active shopper in the log)", lambda: client.recommend(user, k=5))
    # A new id each run: the event below is logged for good, so a second demo on the same state
    # would otherwise show a "new" shopper who viewed an item last time.
    shopper = f"demo-shopper-{secrets.token_hex(3)}"
    show(f"recommend for a new shopper {shopper} (cold start)", lambda: client.recommend(shopper, k=5))
    show(f"the new shopper views {item} ({sample['item_title']})",
         lambda: client.events([{"user_id": shopper, "event_type": "view", "item_id": item}]))
    show("recommend for the new shopper, a moment later", lambda: client.recommend(shopper, k=5))
    show("a bad request (k too large)", lambda: client.search(q, k=100000))


def deploy(artifacts: str, state: str, address: str = "http://127.0.0.1:8265", overrides: list[str] | None = None,
           show_demo: bool = False, http_port: int | None = None, cpus: int | str | None = "auto") -> int:
    """Render the config, `serve deploy` it, wait for /healthz; with show_demo, send sample requests."""
    overrides = list(overrides or [])
    if show_demo and not os.environ.get("INTENTLY_API_KEY"):
        overrides.insert(0, "allow_anonymous_writes=true")  # the local demo logs an event without a key
    moved = shop_state.check_artifacts(Path(state), artifacts)  # another shop's online state is set aside
    if moved:
        print(moved, flush=True)
    path, base = render(artifacts, state, overrides, Path(state) / "serve_config.yaml", http_port, cpus)
    print(f"serve deploy {path} (address {address})", flush=True)
    serve_bin = Path(sys.executable).parent / "serve"
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"))
    proc = subprocess.run([str(serve_bin), "deploy", str(path), "--address", address], env=env)
    if proc.returncode != 0:
        print("serve deploy failed; is the cluster up (`make ray-up`)?", file=sys.stderr)
        return proc.returncode
    revision = yaml.safe_load(path.read_text())["applications"][0]["args"]["revision"]
    health = wait_healthy(base, address, env, revision=revision)
    print(f"\nintently is serving on {base}  (OpenAPI docs: {base}/docs, metrics: {base}/metrics)")
    fast = direct_url(base)
    if fast:
        print(f"  fast path without the proxy hop: {fast} (moves if the Ingress replica is replaced)")
    print(f"  versions: {health['versions']}")
    print(f"  writes {health['writes']}", flush=True)
    if show_demo:
        demo(base, artifacts)
        print(f"\nThe server keeps running on {base}; stop it with `make ray-down`.", flush=True)
    return 0


def cluster_cpus(address: str) -> int | None:
    """The CPUs of the cluster's live nodes, asked of its dashboard (Ray's state API, about 0.3 s;
    needs RAY_AUTH_MODE=token in the environment at start, as `make serve` sets it), or None when
    it cannot say. The app must be sized to what the cluster has, not to this machine: a 2-CPU
    local cluster on a 16-CPU machine cannot place replicas sized for 16."""
    try:
        from ray.util.state import list_nodes

        nodes = list_nodes(address=address, detail=True, raise_on_missing_output=False)
        cpus = sum(float((n.resources_total or {}).get("CPU", 0)) for n in nodes if n.state == "ALIVE")
    except Exception as e:  # noqa: BLE001 - any failure falls back to this machine's CPUs, said aloud
        print(f"sizing: could not read the cluster's CPUs from {address} ({type(e).__name__}: "
              f"{str(e).split('. ')[0]}); using this machine's", flush=True)
        return None
    return int(cpus) if cpus >= 1 else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Deploy the intently Serve app on the running cluster.")
    ap.add_argument("--artifacts", default="artifacts", help="artifacts root: a folder or a URI (s3://...)")
    ap.add_argument("--state", default="state")
    ap.add_argument("--address", default="http://127.0.0.1:8265", help="the cluster's dashboard (serve deploy)")
    ap.add_argument("--http-port", type=int, default=None, help="the Serve proxy's port (default: serving/config.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an app arg")
    ap.add_argument("--cpus", default="auto", help="size replicas and limits for this many CPUs (serving/sizing.py); "
                    "auto: the cluster's (its dashboard says; else this machine's); 2: serving/config.yaml as written")
    ap.add_argument("--demo", action="store_true", help="send a few requests chosen from the data once healthy")
    ap.add_argument("--kuberay", metavar="FILE", help="write the KubeRay RayService manifest instead of deploying "
                    "(--artifacts is then the S3 URI the pods read, --state a path inside the pod)")
    ap.add_argument("--image", default="intently:0.1.0", help="the container image, for --kuberay")
    ns = ap.parse_args(argv)
    if ns.kuberay:
        Path(ns.kuberay).write_text(render_rayservice(ns.artifacts, ns.state, ns.image))
        print(f"wrote {ns.kuberay}")
        return 0
    try:
        from serving.sizing import parse_cpus

        cpus = parse_cpus(ns.cpus)
    except ValueError as e:
        ap.error(f"--{e}")
    if ns.cpus == "auto":
        cpus = cluster_cpus(ns.address) or cpus
    return deploy(ns.artifacts, ns.state, ns.address, ns.set, ns.demo, ns.http_port, cpus)


if __name__ == "__main__":
    sys.exit(main())
