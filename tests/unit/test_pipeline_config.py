"""jobs.pipeline without Ray: its config, the stage arguments it builds, and what it prints."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from features.config import ConfigError, load_config
from jobs import pipeline as P

ROOT = Path(__file__).resolve().parents[2]


def test_pipeline_yaml_is_the_dataclass_defaults_and_errors_name_the_key():
    assert load_config(P.PipelineConfig, ROOT / "jobs/configs/pipeline.yaml") == P.PipelineConfig()
    with pytest.raises(ConfigError, match="unknown config key.*'fine_tun'.*allowed keys"):
        load_config(P.PipelineConfig, None, ["fine_tun=false"])
    with pytest.raises(ConfigError, match="deploy.http_port"):
        load_config(P.PipelineConfig, None, ["deploy.http_port=eighty"])
    with pytest.raises(ConfigError, match="events and items are required.*MAPPING=auto"):
        P.run(P.PipelineConfig(items="x"))
    with pytest.raises(ConfigError, match="events and items are required"):  # a guessed mapping needs the export
        P.run(P.PipelineConfig(mapping="auto"))


def test_the_encoder_fine_tune_runs_on_gpus_by_default_and_on_cpus_when_asked():
    from jobs.common import fine_tune_plan

    assert load_config(P.PipelineConfig, None, ["fine_tune=true"]).fine_tune is True
    assert load_config(P.PipelineConfig, None, ["fine_tune=false"]).fine_tune is False
    with pytest.raises(ConfigError, match="fine_tune"):
        load_config(P.PipelineConfig, None, ["fine_tune=sometimes"])
    tune, workers, why = fine_tune_plan("auto", 0)
    assert not tune and workers == 0 and "no GPU" in why and "fine_tune=true" in why
    tune, workers, why = fine_tune_plan("auto", 2)
    assert tune and workers == 2 and "GPU" in why
    assert fine_tune_plan("auto", 16)[1] == 8
    assert fine_tune_plan(True, 0) == (True, 0, "") and fine_tune_plan(False, 4) == (False, 0, "")


def test_stage_arguments_and_config_files():
    assert P._sets({"a": 1, "b.c": "s3://x"}, ("d=2", "--config=jobs/configs/x.yaml")) == [
        "--set", "a=1", "--set", "b.c=s3://x", "--set", "d=2", "--config", "jobs/configs/x.yaml"]


def test_span_of_a_log_decides_the_windows(tmp_path):
    import datetime as dt

    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    pl.DataFrame({"ts": [t0, t0 + dt.timedelta(days=12)]}).write_parquet(tmp_path / "e.parquet")
    assert P._span_days(str(tmp_path / "e.parquet")) == pytest.approx(12.0)
    pl.DataFrame({"ts": ["yesterday"]}).write_parquet(tmp_path / "s.parquet")
    assert P._span_days(str(tmp_path / "s.parquet")) is None  # untyped: the defaults apply
    assert P._span_days(str(tmp_path / "missing.parquet")) is None


def test_a_stage_prints_its_own_summary_not_its_log():
    log = ["resolved config: {...}", "[build_index 1] encode (t=0.0s)", "  1,000 items -> 384-d", "         done in 3.0s",
           "[build_index 4] done (t=9.0s)", "index v1 -> /a/index/v1", "  1,000 items, 384-d, flat", "build_index: finished in 9.1s"]
    assert P._closing_lines(log) == ["index v1 -> /a/index/v1", "  1,000 items, 384-d, flat"]
    ranker = ["[train_ranker 3] LightGBM (t=1s)", "ranker v2 -> /a/ranker/v2", "  valid NDCG@10: learned 0.2 vs 0.1",
              "[train_ranker 4] done (t=9.0s)", "train_ranker: finished in 9.0s"]
    assert P._closing_lines(ranker) == ["ranker v2 -> /a/ranker/v2", "  valid NDCG@10: learned 0.2 vs 0.1"]
