"""The Ray system settings every local node of ours starts with (jobs, tests, `make ray-up`)."""

from __future__ import annotations

import pytest

from features.config import ConfigError
from jobs.common import ray_system_config


def test_idle_workers_are_kept_beyond_the_cpu_count_and_for_a_minute():
    # Ray's defaults: num_cpus idle workers, the rest killed after 1 s idle
    two, sixteen = ray_system_config(2), ray_system_config(16)
    assert two == {"num_workers_soft_limit": 8, "idle_worker_killing_time_threshold_ms": 60_000}
    assert sixteen["num_workers_soft_limit"] == 36 > two["num_workers_soft_limit"]


def test_a_cpu_count_below_one_is_refused():
    with pytest.raises(ConfigError, match="num_cpus must be >= 1, got 0"):
        ray_system_config(0)


def test_one_blas_thread_limits_numpy_blas_inside_the_block_only():
    import numpy as np  # noqa: F401 - loads the BLAS threadpoolctl reports
    from threadpoolctl import threadpool_info

    from jobs.common import one_blas_thread

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    assert before  # numpy's BLAS is visible
    with one_blas_thread():
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before
