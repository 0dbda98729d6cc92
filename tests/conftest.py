"""One local Ray for the whole test session (2 CPUs, no dashboard), shared by integration and e2e tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from jobs.common import ray_system_config

    # With direct ingress (RAY_SERVE_THROUGHPUT_OPTIMIZED, as `make serve` runs), Serve keeps a
    # stopped Ingress replica draining for 30 s so that an external load balancer can deregister
    # it. The tests have none, and they stop Ingress replicas three times (a restart, a second app,
    # the shutdown): 90 s of make test spent waiting. Read by the cluster started below.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    # address="local": a private cluster even when `make demo` left one running (ray.init() would
    # join that one and refuse num_cpus).
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _system_config=ray_system_config(2))
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


# The slowest files first. With `-n 2 --dist loadfile --no-loadscope-reorder` (make test) each worker
# takes whole files in collection order (xdist's default order, most tests first, would put a long
# one-test file last, where it runs alone). Starting the longest ones first
# (longest-processing-time-first scheduling) keeps both workers busy to the end.
SLOW_FIRST = (
    "tests/integration/test_job_submit.py",  # make test-pipeline only
    "tests/e2e/test_serve_api.py",
    "tests/integration/test_evaluate.py",
    "tests/integration/test_build_features.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order inside each file is kept
