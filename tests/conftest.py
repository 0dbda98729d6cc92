"""One local Ray for the whole test session (2 CPUs, no dashboard), shared by integration and e2e tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    # address="local": a private cluster even when `make demo` left one running (ray.init() would
    # join that one and refuse num_cpus).
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
