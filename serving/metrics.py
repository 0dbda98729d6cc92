"""Prometheus metrics of the whole application, not of one replica.

Each Ingress replica counts into its own `IngressMetrics` registry and reports a cumulative
snapshot of it (every `metrics_push_s`, and before answering a scrape) to the single Telemetry
deployment (serving/telemetry.py), whose `Aggregate` sums the snapshots of every replica that ever
reported. So GET /metrics, whichever replica answers it, shows the application: counters and
histograms never jump back when a scrape lands on another replica, and the requests a replaced
replica served stay counted. Gauges (requests in flight) sum over the replicas that reported in
the last `stale_s` seconds only. This module is Ray-free; the transport is the Serve handle.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

Family = dict[str, Any]  # {"name", "type", "doc", "samples": [(sample name, labels, value), ...]}
LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5)


class IngressMetrics:
    """The counters one Ingress replica keeps."""

    def __init__(self) -> None:
        reg = self.registry = CollectorRegistry()
        self.requests = Counter("intently_requests", "HTTP requests", ["endpoint", "status"], registry=reg)
        self.latency = Histogram("intently_request_latency_seconds", "request latency", ["endpoint"], registry=reg,
                                 buckets=LATENCY_BUCKETS_S)
        self.events = Counter("intently_events_accepted", "events durably logged", registry=reg)
        self.upserts = Counter("intently_item_upserts", "PUT /v1/items by whether the item's text was new (encoded) "
                               "or unchanged (its vector kept)", ["text"], registry=reg)
        self.in_flight = Gauge("intently_requests_in_flight", "requests being served", registry=reg)
        self.shed = Counter("intently_requests_shed", "requests refused with 503 by the in-flight limit",
                            ["endpoint"], registry=reg)

    def snapshot(self) -> list[Family]:
        """Every sample, cumulative (the `_created` timestamps, which cannot be summed, left out)."""
        return [{"name": m.name, "type": m.type, "doc": m.documentation,
                 "samples": [(s.name, dict(s.labels), float(s.value)) for s in m.samples
                             if not s.name.endswith("_created")]}
                for m in self.registry.collect()]

    def text(self) -> bytes:
        return render(self.snapshot())


class Aggregate:
    """The latest snapshot of every replica, summed on demand."""

    def __init__(self, stale_s: float = 15.0) -> None:
        self.stale_s = stale_s
        self._by_replica: dict[str, tuple[float, list[Family]]] = {}

    def report(self, replica: str, families: list[Family], now: float) -> None:
        self._by_replica[replica] = (now, families)

    def families(self, now: float) -> list[Family]:
        out: dict[str, Family] = {}
        sums: dict[str, dict[tuple, float]] = {}
        fresh = 0
        for at, families in self._by_replica.values():
            live = now - at <= self.stale_s
            fresh += live
            for fam in families:
                if fam["type"] == "gauge" and not live:
                    continue  # a gone replica holds no request in flight
                out.setdefault(fam["name"], {**fam, "samples": []})
                acc = sums.setdefault(fam["name"], {})
                for name, labels, value in fam["samples"]:
                    key = (name, tuple(labels.items()))
                    acc[key] = acc.get(key, 0.0) + value
        for name, fam in out.items():
            fam["samples"] = [(n, dict(labels), v) for (n, labels), v in sums[name].items()]
        replicas = {"name": "intently_ingress_replicas", "type": "gauge",
                    "doc": "Ingress replicas that reported in the last stale_s seconds (the others still count)",
                    "samples": [("intently_ingress_replicas", {}, float(fresh))]}
        return [*out.values(), replicas]

    def text(self, now: float) -> bytes:
        return render(self.families(now))


class _Fixed:
    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for fam in self.families:
            m = Metric(fam["name"], fam["doc"], fam["type"])
            for name, labels, value in fam["samples"]:
                m.add_sample(name, labels, value)
            yield m


def render(families: list[Family]) -> bytes:
    """The Prometheus text format of the families (prometheus_client writes it)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(families))
    return generate_latest(reg)
