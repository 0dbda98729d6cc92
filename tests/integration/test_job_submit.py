"""`ray job submit` against a real `ray start --head` cluster, as a user would run the job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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
    """A private head node (own ports and temp dir). `ray start --block` in its own process group:
    teardown stops exactly this cluster, never the session's in-process Ray or a user's
    `make ray-up` (which a global `ray stop` would kill)."""
    gcs, dash = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join the test session's Ray
    env.update(PATH=f"{BIN}:{os.environ['PATH']}", RAY_USAGE_STATS_ENABLED="0")
    tmp = Path("/tmp") / f"ray-test-{os.getpid()}"  # Ray socket paths must stay short
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--temp-dir={tmp}", "--disable-usage-stats",
           # Fixed default agent ports would collide with the session's in-process Ray.
           f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
           f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]
    log = open(tmp_path_factory.mktemp("head") / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # the server answers (e.g. 401 without a token): it is up
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray head did not start; see {log.name}") from None
                time.sleep(1)
        yield address, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
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
    for attempt in range(12):
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(env, RAY_AUTH_MODE="token"), capture_output=True, text=True,
                              timeout=600)
        # The dashboard answers before the head's job agent registers; Ray says to retry.
        if "No available agent to submit job" not in proc.stderr + proc.stdout:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout + proc.stderr
    version = A.latest_complete(str(out), "features")
    assert version is not None
    manifest = json.loads((Path(version) / "manifest.json").read_text())
    assert manifest["metrics"]["events_in"] == 30_000
    assert manifest["metrics"]["events_valid"] == 30_000
