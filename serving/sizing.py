"""Size the Serve app to the node: replica counts, CPU shares and in-flight limits from its CPUs.

serving/config.yaml is written for the reference profile, a 2-CPU node; on it `size` changes
nothing. On a bigger node (`make serve` uses the CPUs the cluster reports, else this machine's;
`--cpus N` sets them, `--cpus 2` keeps the file as written) it scales what limits throughput:

- The replicas that encode queries (the Ingress with encoder.placement ingress, the default; the
  QueryEncoder with placement deployment): up to cpus/2 replicas, each a whole CPU (its ONNX
  Runtime session uses encoder.threads intra-op threads).
- Ingress, Retriever (which ranks too): up to cpus/4 replicas each when they do not encode
  (never fewer than the file's max). With retriever_placement ingress (the default) the Retriever
  only logs item upserts, so it keeps the file's count: another replica would only hold another
  catalog copy.
- overload.max_in_flight = 16 per CPU (32 on 2; write_reserve half of it), and on more than 2
  CPUs the Ingress scales out at 3/4 of that limit, before it sheds (on 2 CPUs the file runs two
  Ingress replicas, min = max, so its target never acts; docs/benchmarks.md).
- The HAProxy ingress threads (RAY_SERVE_HAPROXY_NBTHREAD, read by `ray start`): cpus/4, 1 to 4.

Telemetry and Profiles stay single replicas by design (one aggregator, one event-log writer).
"""

from __future__ import annotations

import copy
import os
from typing import Any

REFERENCE_CPUS = 2
IN_FLIGHT_PER_CPU = 16
SCALED = ("Ingress", "Retriever")


def host_cpus() -> int:
    """CPUs this process may use (cgroup/affinity aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def parse_cpus(value: str | int | None) -> int:
    """`auto`/None -> host_cpus(); else a positive integer (the field is named in the error)."""
    if value is None or value == "auto":
        return host_cpus()
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"cpus={value!r}; allowed: auto or a positive integer") from None
    if n < 1:
        raise ValueError(f"cpus={value!r}; allowed: auto or a positive integer")
    return n


def haproxy_threads(cpus: int) -> int:
    return max(1, min(4, cpus // 4))


def size(conf: dict[str, Any], cpus: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a sized copy of a serve config dict, what was chosen) for a node with `cpus` CPUs."""
    cpus = parse_cpus(cpus)
    out = copy.deepcopy(conf)
    app = out["applications"][0]
    deps = {d["name"]: d for d in app.get("deployments", [])}
    chosen: dict[str, Any] = {"cpus": cpus, "haproxy_threads": haproxy_threads(cpus)}
    if cpus <= REFERENCE_CPUS:
        chosen["profile"] = f"reference ({REFERENCE_CPUS} CPUs): serving/config.yaml as written"
        return out, chosen
    chosen["profile"] = f"scaled from the {REFERENCE_CPUS}-CPU reference to {cpus} CPUs"
    args = app.setdefault("args", {})
    overload = args.setdefault("overload", {})
    in_flight = IN_FLIGHT_PER_CPU * cpus
    overload["max_in_flight"] = in_flight
    overload["write_reserve"] = in_flight // 2
    chosen["max_in_flight"] = in_flight

    def autoscale(name: str) -> dict[str, Any]:
        return deps[name].setdefault("autoscaling_config", {})

    # The replicas that encode queries are the heavy ones: the Ingress (encoder.placement ingress,
    # the default) or the QueryEncoder deployment (placement deployment).
    heavy = "QueryEncoder" if args.get("encoder", {}).get("placement", "ingress") == "deployment" else "Ingress"
    reads_in_ingress = args.get("retriever_placement", "ingress") == "ingress"
    for name in (heavy, *[n for n in SCALED if n != heavy]):
        if name not in deps or (name == "Retriever" and reads_in_ingress):
            continue
        a = autoscale(name)
        a["max_replicas"] = max(int(a.get("max_replicas", 1)), cpus // 2 if name == heavy else cpus // 4)
        chosen[name] = {"max_replicas": a["max_replicas"]}
        if name == heavy:
            deps[name].setdefault("ray_actor_options", {})["num_cpus"] = 1.0
            chosen[name]["num_cpus"] = 1.0
    if "Ingress" in deps:
        a = autoscale("Ingress")
        a["target_ongoing_requests"] = max(1, in_flight * 3 // 4)
        deps["Ingress"]["max_ongoing_requests"] = max(int(deps["Ingress"].get("max_ongoing_requests", 0)), 2 * in_flight)
        chosen["Ingress"]["target_ongoing_requests"] = a["target_ongoing_requests"]
    return out, chosen
