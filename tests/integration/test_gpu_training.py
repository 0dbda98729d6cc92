"""The GPU path of the encoder job: Ray Train with use_gpu=True. Skipped without a CUDA GPU
(CI has none); run it on a GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from features import artifacts as A

pytestmark = [pytest.mark.gpu, pytest.mark.integration,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_smoke_training_on_gpu(tmp_path):
    from features.config import load_config
    from jobs import build_features, train_encoder

    root = Path(__file__).resolve().parents[2]
    canon = root / "data/canonical/online_retail"
    if not (canon / "events.parquet").is_file():
        pytest.skip("run `make data` first")
    build_features.run(build_features.BuildFeaturesConfig(
        events=str(canon / "events.parquet"), items=str(canon / "items.parquet"), output_root=str(tmp_path)))
    cfg = load_config(train_encoder.TrainEncoderConfig, root / "jobs/configs/train_encoder_smoke.yaml",
                      [f"output_root={tmp_path}", "train.use_gpu=true", "train.num_workers=1", "train.batch_size=64"])
    assert train_encoder.run(cfg) == 0
    manifest = json.loads((Path(A.latest_complete(str(tmp_path), "encoder")) / "manifest.json").read_text())
    assert manifest["metrics"]["device"] == "gpu" and manifest["metrics"]["train_samples_per_s"] > 0
