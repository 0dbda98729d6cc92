"""Telemetry deployment: one replica that sums the Ingress replicas' metrics (serving/metrics.py),
so GET /metrics shows the whole application whichever Ingress replica answers it."""

from __future__ import annotations

import time

from ray import serve

from serving.metrics import Aggregate, Family
from serving.settings import Resolved, ServingConfig


@serve.deployment(name="Telemetry")
class Telemetry:
    def __init__(self, cfg: ServingConfig, res: Resolved) -> None:
        self.agg = Aggregate(stale_s=max(15.0, 5 * cfg.metrics_push_s))

    def report(self, replica: str, families: list[Family]) -> None:
        self.agg.report(replica, families, time.monotonic())

    def text(self) -> bytes:
        return self.agg.text(time.monotonic())
