"""`ray job submit` against a real `ray start --head` cluster, as a user would run the job."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from features import artifacts as A

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A private head node (own ports and temp dir) so it never touches a user's `make ray-up`."""
    gcs, dash = _free_port(), _free_port()
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", RAY_USAGE_STATS_ENABLED="0")
    tmp = Path("/tmp") / f"ray-test-{os.getpid()}"  # Ray socket paths must stay short
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={tmp}", "--disable-usage-stats"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def test_build_features_through_ray_job_submit(head, tmp_path):
    address, env = head
    canon = tmp_path / "canonical"
    subprocess.run([sys.executable, "-m", "jobs.import_online_retail", "--set", f"output={canon}"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    small = tmp_path / "events_small.parquet"
    pl.read_parquet(canon / "events.parquet").head(30_000).write_parquet(small)
    out = tmp_path / "artifacts"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
           "python", "-m", "jobs.build_features", "--set", f"events={small}",
           "--set", f"items={canon / 'items.parquet'}", "--set", f"output_root={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(env, RAY_AUTH_MODE="token"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout + proc.stderr
    version = A.latest_complete(str(out), "features")
    assert version is not None
    manifest = json.loads((Path(version) / "manifest.json").read_text())
    assert manifest["metrics"]["events_in"] == 30_000
    assert manifest["metrics"]["events_valid"] == 30_000
