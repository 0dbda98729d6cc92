"""`ray job submit` against a real `ray start --head` cluster, as a user would run the job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from features import artifacts as A
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HEAD_ATTEMPTS = 5  # a first start timed out in both clean-clone runs with two pytest workers
pytestmark = pytest.mark.integration


def _start_head(env: dict, tmp: Path, log_path: Path) -> tuple[subprocess.Popen, str, Any]:
    """`ray start --head --block` on fresh ports; returns once the node says it started (the
    dashboard answers before the node is up, and a node may still give up after 30 s on a busy
    box: Ray's own start-up limit), or raises with the log when it does not."""
    dash = free_port()
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=2",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--temp-dir={tmp}", "--disable-usage-stats",
           # Fixed default agent ports would collide with the session's in-process Ray.
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            log.close()
            raise RuntimeError(f"ray head did not start; see {log_path}")
        time.sleep(1)
    return proc, f"http://127.0.0.1:{dash}", log


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A private head node (own ports and temp dir). `ray start --block` in its own process group:
    teardown stops exactly this cluster, never the session's in-process Ray or a user's
    `make ray-up` (which a global `ray stop` would kill). A start that times out under load (the
    other pytest worker may be busy) is tried again, as an operator would, at most HEAD_ATTEMPTS times."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join the test session's Ray
    env.update(PATH=f"{BIN}:{os.environ['PATH']}", RAY_USAGE_STATS_ENABLED="0")
    tmp = Path("/tmp") / f"ray-test-{os.getpid()}"  # Ray socket paths must stay short
    logs = tmp_path_factory.mktemp("head")
    for attempt in range(HEAD_ATTEMPTS):
        try:
            proc, address, log = _start_head(env, tmp, logs / f"head-{attempt}.log")
            break
        except RuntimeError:
            shutil.rmtree(tmp, ignore_errors=True)
            if attempt == HEAD_ATTEMPTS - 1:
                raise
    try:
        yield address, env
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _submit(address: str, env: dict, *args: str) -> str:
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--", "python", "-m", *args]
    for _ in range(12):
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(env, RAY_AUTH_MODE="token"), capture_output=True, text=True,
                              timeout=600)
        # The dashboard answers before the head's job agent registers; Ray says to retry.
        if "No available agent to submit job" not in proc.stderr + proc.stdout:
            break
        time.sleep(5)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "succeeded" in out
    return out


def test_features_train_index_search_through_ray_job_submit(head, tmp_path):
    """The user's path on a cluster: build features, fine-tune (smoke, 2 DDP workers on Ray
    Train), build the index from that checkpoint, then search the bundled catalog."""
    address, env = head
    canon = tmp_path / "canonical"
    subprocess.run([sys.executable, "-m", "jobs.import_online_retail", "--set", f"output={canon}"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    # A month-sized slice and the items it mentions keep the test fast; the whole flow is the same.
    events = pl.read_parquet(canon / "events.parquet").head(30_000)
    items = pl.read_parquet(canon / "items.parquet").filter(pl.col("item_id").is_in(events["item_id"].unique().implode()))
    events.write_parquet(tmp_path / "events.parquet")
    items.write_parquet(tmp_path / "items.parquet")
    out = tmp_path / "artifacts"

    _submit(address, env, "jobs.build_features", "--set", f"events={tmp_path / 'events.parquet'}",
            "--set", f"items={tmp_path / 'items.parquet'}", "--set", f"output_root={out}",
            "--set", "split.valid_days=2", "--set", "split.test_days=2")  # the slice spans 13 days
    features = A.latest_complete(str(out), "features")
    assert features is not None
    fm = json.loads((Path(features) / "manifest.json").read_text())
    assert fm["metrics"]["events_in"] == fm["metrics"]["events_valid"] == 30_000

    log = _submit(address, env, "jobs.train_encoder", "--config", "jobs/configs/train_encoder_smoke.yaml",
                  "--set", f"output_root={out}")
    encoder = A.latest_complete(str(out), "encoder")
    assert encoder is not None, log[-3000:]
    em = json.loads((Path(encoder) / "manifest.json").read_text())
    assert em["metrics"]["num_workers"] == 2 and em["metrics"]["steps"] == 4
    assert em["inputs"]["features"]["path"] == features
    assert 0.0 <= em["metrics"]["valid_best"]["valid_recall@10"] <= 1.0
    assert (Path(encoder) / "model" / "model.safetensors").is_file()

    _submit(address, env, "jobs.build_index", "--set", f"output_root={out}", "--set", f"encoder={encoder}")
    index_dir = A.latest_complete(str(out), "index")
    assert index_dir is not None
    im = json.loads((Path(index_dir) / "manifest.json").read_text())
    assert im["outputs"]["item_count"] == items.height and im["outputs"]["index_type"] == "flat"
    assert im["inputs"]["encoder"]["weights_sha256"] == em["outputs"]["weights_sha256"]

    from features.models.encoder import TwoTowerEncoder
    from features.retrieval.index import ItemIndex

    index = ItemIndex.load(index_dir)
    enc = TwoTowerEncoder.load(Path(encoder) / "model")
    _, ids = index.search(enc.encode(["lunch bag"]), 5)
    titles = dict(zip(items["item_id"].to_list(), items["title"].to_list()))
    hits = [titles[i] for i in ids[0]]
    assert sum("LUNCH BAG" in t.upper() for t in hits) >= 3, hits
