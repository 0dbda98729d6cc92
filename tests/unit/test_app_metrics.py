"""GET /metrics sums every Ingress replica (serving/metrics.py): counters and histograms from
every replica that ever reported, gauges only from live ones, in the Prometheus text format."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import Aggregate, IngressMetrics


def _samples(text: bytes) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_two_replicas_are_summed_and_a_gone_replica_still_counts():
    a, b = IngressMetrics(), IngressMetrics()
    for _ in range(3):
        a.requests.labels("search", "200").inc()
    b.requests.labels("search", "200").inc()
    b.requests.labels("events", "401").inc()
    a.latency.labels("search").observe(0.004)
    b.latency.labels("search").observe(0.3)
    a.in_flight.inc(2)
    b.in_flight.inc(5)
    agg = Aggregate(stale_s=10)
    agg.report("a", a.snapshot(), now=100.0)
    agg.report("b", b.snapshot(), now=100.0)
    got = _samples(agg.text(now=101.0))
    assert got[("intently_requests_total", (("endpoint", "search"), ("status", "200")))] == 4
    assert got[("intently_requests_total", (("endpoint", "events"), ("status", "401")))] == 1
    assert got[("intently_request_latency_seconds_count", (("endpoint", "search"),))] == 2
    assert got[("intently_request_latency_seconds_bucket", (("endpoint", "search"), ("le", "0.005")))] == 1
    assert got[("intently_request_latency_seconds_bucket", (("endpoint", "search"), ("le", "+Inf")))] == 2
    assert got[("intently_requests_in_flight", ())] == 7
    assert got[("intently_ingress_replicas", ())] == 2
    assert not any(name.endswith("_created") for name, _ in got)
    # replica b stops reporting (replaced): its requests stay counted, its in-flight gauge does not
    a.requests.labels("search", "200").inc()
    agg.report("a", a.snapshot(), now=120.0)
    later = _samples(agg.text(now=121.0))
    assert later[("intently_requests_total", (("endpoint", "search"), ("status", "200")))] == 5
    assert later[("intently_requests_in_flight", ())] == 2 and later[("intently_ingress_replicas", ())] == 1


def test_a_replica_reporting_again_replaces_its_own_numbers_not_adds():
    a = IngressMetrics()
    agg = Aggregate()
    a.events.inc(10)
    agg.report("a", a.snapshot(), now=0.0)
    agg.report("a", a.snapshot(), now=1.0)  # the same cumulative counts twice
    assert _samples(agg.text(now=1.0))[("intently_events_accepted_total", ())] == 10
