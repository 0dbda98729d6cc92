"""Config loading rules, the Ray-free features/ rule, artifacts, cluster.yaml and text rendering."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from features import artifacts as A
from features.config import ConfigError, load_config, to_dict
from features.data.text import item_text, item_text_expr

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    mode: Literal["exact", "ivf"] = "exact"


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)
    when: str | None = None


def test_defaults_overrides_and_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: y\ninner: {rate: 1}\n")
    cfg = load_config(Outer, f, ["inner.mode=ivf", "sizes=[3, 4]", "when=2024-01-01"])
    assert cfg == Outer(name="y", sizes=(3, 4), inner=Inner(rate=1.0, mode="ivf"), when="2024-01-01")
    assert to_dict(cfg)["sizes"] == [3, 4]
    # YAML 1.1 reads 5e-5 (no dot) as a string: a float field takes it as the number meant
    assert load_config(Outer, None, ["inner.rate=5e-5"]).inner.rate == 5e-5
    # a whole number where text is meant is its text (a column named 790, unquoted); a boolean is not
    assert load_config(Outer, None, ["name=790"]).name == "790"
    with pytest.raises(ConfigError, match=r"name: expected str, got True"):
        load_config(Outer, None, ["name=true"])


@pytest.mark.parametrize("override, message", [
    ("inner.rat=1", r"unknown config key\(s\) 'rat' in section 'inner'; allowed keys: mode, rate"),
    ("bogus=1", r"unknown config key\(s\) 'bogus'; allowed keys: inner, name, sizes, when"),
    ("inner.mode=hnsw", r"inner.mode: 'hnsw' is not allowed; allowed values: 'exact', 'ivf'"),
    ("inner.rate=fast", r"inner.rate: expected float, got 'fast'"),
    ("sizes=3", r"sizes: expected a list"),
    ("noequals", r"expected the form section.key=value"),
])
def test_bad_config_names_the_key_and_allowed_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, [override])


def test_job_default_configs_load():
    from jobs.build_features import BuildFeaturesConfig
    from jobs.import_online_retail import ImportConfig

    assert load_config(BuildFeaturesConfig, ROOT / "jobs/configs/build_features.yaml") == BuildFeaturesConfig()
    assert load_config(ImportConfig, ROOT / "jobs/configs/import_online_retail.yaml") == ImportConfig()
    from jobs.build_index import BuildIndexConfig
    from jobs.train_encoder import TrainEncoderConfig, check_config

    # The YAML files document the defaults: they must equal the dataclasses, key for key.
    assert load_config(TrainEncoderConfig, ROOT / "jobs/configs/train_encoder.yaml") == TrainEncoderConfig()
    assert load_config(BuildIndexConfig, ROOT / "jobs/configs/build_index.yaml") == BuildIndexConfig()
    from jobs.evaluate import EvaluateConfig
    from jobs.import_crowdflower import ImportCrowdflowerConfig
    from jobs.train_ranker import TrainRankerConfig

    assert load_config(EvaluateConfig, ROOT / "jobs/configs/evaluate.yaml") == EvaluateConfig()
    assert load_config(TrainRankerConfig, ROOT / "jobs/configs/train_ranker.yaml") == TrainRankerConfig()
    assert load_config(ImportCrowdflowerConfig, ROOT / "jobs/configs/import_crowdflower.yaml") == ImportCrowdflowerConfig()
    smoke = load_config(TrainEncoderConfig, ROOT / "jobs/configs/train_encoder_smoke.yaml")
    check_config(smoke)
    assert smoke.train.num_workers == 2 and smoke.train.max_steps < 10


@pytest.mark.parametrize("override, message", [
    ("kinds=[history, clicks]", "allowed values"),
    ("train.batch_size=1", "train.batch_size"),
    ("train.num_workers=0", "train.num_workers"),
    ("train.item_tower=both", "allowed values: 'shared', 'frozen'"),
])
def test_train_encoder_config_errors_name_the_key(override, message):
    from jobs.train_encoder import TrainEncoderConfig, check_config

    with pytest.raises(ConfigError, match=message):
        check_config(load_config(TrainEncoderConfig, None, [override]))


@pytest.mark.parametrize("job, overrides, message, fixed", [
    ("build_index", ["cpus_per_actor=2"], r"num_actors x cpus_per_actor \(and gpus_per_actor\) ask for 4 CPUs but "
     r"ray.num_cpus is 2", ["ray.num_cpus=4"]),
    ("build_index", ["gpus_per_actor=-1"], "gpus_per_actor must be >= 0", ["gpus_per_actor=0"]),
    ("build_index", ["probes=-1"], r"probes must be >= 0 \(0: no probe queries\)", ["probes=0"]),
    ("train_encoder", ["train.cpus_per_worker=2"], r"train.num_workers x train.cpus_per_worker .* ask for 4 CPUs",
     ["ray.num_cpus=4"]),
    ("train_sequence", ["num_workers=2"], r"num_workers x cpus_per_worker \(and use_gpu\) ask for 4 CPUs",
     ["ray.address=auto"]),  # a cluster may grow: not checked there
    ("train_sequence", ["num_workers=2"], "ask for 4 CPUs", ["trainer=local"]),  # no Ray Train workers
    ("train_ranker", ["cpus_per_worker=3"], "num_workers x cpus_per_worker ask for 3 CPUs", ["ray.num_cpus=3"]),
])
def test_work_that_cannot_fit_the_local_ray_fails_before_it_starts(monkeypatch, job, overrides, message, fixed):
    """Ray would wait forever for resources its private local cluster never gets."""
    import importlib

    import jobs.common as C

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(C.ray, "is_initialized", lambda: False)
    mod = importlib.import_module(f"jobs.{job}")
    cls = {"build_index": "BuildIndexConfig", "train_encoder": "TrainEncoderConfig",
           "train_sequence": "TrainSequenceConfig", "train_ranker": "TrainRankerConfig"}[job]
    with pytest.raises(ConfigError, match=message):
        mod.check_config(load_config(getattr(mod, cls), None, overrides))
    mod.check_config(load_config(getattr(mod, cls), None, overrides + fixed))


def test_a_gpu_the_machine_lacks_fails_before_ray_starts(monkeypatch):
    import torch

    import jobs.common as C

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(C.ray, "is_initialized", lambda: False)
    have = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=f"ask for {have + 1} GPU.* this machine has {have} CUDA GPU"):
        C.check_fits(C.RayConfig(num_cpus=2), 1, have + 1, "use_gpu")
    C.check_fits(C.RayConfig(num_cpus=2), 2, have, "use_gpu")


@pytest.mark.parametrize("override, message", [
    ("split=random", "split: 'random'; allowed: time:<ISO 8601 instant>, last:<days>d, leave-last"),
    ("split=last:0d", "after 'last:' is not a number of days"),
    ("split=time:soon", "not an ISO 8601 instant"),
    ("ks=[0, 10]", "ks must be positive"),
    ("events=null", "events and judgments are both null"),
    ("search.max_queries=-1", "search.max_queries must be >= 0"),
    ("search.min_log_queries=3", r"search.min_log_queries must be >= 2 x search.folds \(10\)"),
    ("search.window_s=0", "search.window_s must be > 0"),
])
def test_evaluate_config_errors_name_the_key(override, message):
    from jobs.evaluate import EvaluateConfig, check_config

    with pytest.raises(ValueError, match=message):
        check_config(load_config(EvaluateConfig, None, [override]))
    with pytest.raises(ValueError, match="recommend is false and there is no search to evaluate"):
        check_config(load_config(EvaluateConfig, None, ["recommend=false", "search.from_log=false"]))


def test_features_never_imports_ray():
    paths = sorted((ROOT / "features").rglob("*.py"))
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "ray" or n.startswith("ray.") for n in names), f"{path.name} imports ray"
    mods = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in paths if p.stem != "__init__"]
    code = f"import sys; import {', '.join(mods)}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_latest_complete_ignores_versions_without_manifest(tmp_path):
    root = str(tmp_path)
    A.write_manifest(A.join(root, "features", "20240101T000000Z-aaaa"), {"kind": "features"})
    (tmp_path / "features" / "20250101T000000Z-bbbb").mkdir()  # newer but incomplete
    assert A.latest_complete(root, "features").endswith("20240101T000000Z-aaaa")
    assert A.read_manifest(A.latest_complete(root, "features")) == {"kind": "features"}
    assert A.latest_complete(root, "index") is None


def test_fingerprint_follows_content(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.parquet").write_bytes(b"one")
    (d / "_SUCCESS").write_bytes(b"")
    first = A.fingerprint(str(d))
    assert first["files"] == 1 and first["bytes"] == 3
    (d / "a.parquet").write_bytes(b"two")
    assert A.fingerprint(str(d))["sha256"] != first["sha256"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        A.fingerprint(str(tmp_path / "missing"))


def test_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert "GPU" not in types["cpu_worker"]["resources"]
    config["available_node_types"]["gpu_worker"]["not_a_field"] = 1
    with pytest.raises(Exception, match="not_a_field"):
        validate_config(prepare_config(config))


def test_item_text_scalar_and_batch_agree_and_skip_nulls():
    import polars as pl

    assert item_text("  RED  MUG ", "Home > Mugs", None, "") == "RED MUG | Home > Mugs"
    df = pl.DataFrame({"title": ["A"], "category": [None], "brand": ["B"], "description": ["d" * 600]})
    assert df.select(item_text_expr()).item() == item_text("A", None, "B", "d" * 600)
    assert len(item_text("A", None, "B", "d" * 600)) == 512
    # The scalar twin is plain Python (upserts and item-log replays render one item at a time):
    # the same text as the Polars expression, Unicode whitespace and empty fields included.
    import random

    rng = random.Random(0)
    chars = list("ab中|é ") + ["\t", "\n", "\r", "\x0b", "\x85", "\xa0", "\u2003", "\u2028", "\u3000", "\x1c",
                                  "\u200b", "\ufeff", "\u180e"]
    rows = [tuple(None if rng.random() < 0.1 else "".join(rng.choice(chars) for _ in range(rng.randint(0, 25)))
                  for _ in range(4)) for _ in range(3000)] + [(None,) * 4, ("",) * 4, ("x" * 700, None, None, None)]
    df = pl.DataFrame(rows, schema=["title", "category", "brand", "description"], orient="row")
    assert df.select(item_text_expr()).to_series().to_list() == [item_text(*r) for r in rows]


def test_no_code_executing_loaders_for_artifacts():
    """Artifacts load through formats that cannot run code: safetensors, JSON, Parquet, faiss'
    binary index, LightGBM's text model. No pickle, torch.load, joblib or allow_pickle anywhere."""
    banned = ("import pickle", "pickle.load", "torch.load(", "joblib", "allow_pickle=True", "cloudpickle", "dill")
    for folder in ("features", "jobs", "serving", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
            code = code.replace('"""', "").replace("'''", "")
            for b in banned:
                assert b not in code, f"{path.relative_to(ROOT)} uses {b}"


# What each part of features/ may import (docs/architecture.md draws it): a layered library.
ALLOWED = {
    "top": set(),  # config, artifacts, errors, admission, metrics: plain helpers
    "data": {"top"},
    "profiles": {"top", "data"},
    "retrieval": {"top", "data", "profiles"},
    "models": {"top", "data", "retrieval"},
    "evaluation": {"top", "data", "profiles", "retrieval", "models"},
}
SUBPACKAGES = set(ALLOWED) - {"top"}


def _features_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every `features` import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "features":
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "features"]
    return out


def _part(module: str, names: list[str]) -> set[str]:
    parts = module.split(".")
    if len(parts) > 1:
        return {parts[1] if parts[1] in SUBPACKAGES else "top"}
    return {n if n in SUBPACKAGES else "top" for n in names}


def test_features_subpackages_import_only_their_layers():
    for path in sorted((ROOT / "features").rglob("*.py")):
        rel = path.relative_to(ROOT / "features").parts
        me = rel[0] if len(rel) > 1 else "top"
        for module, names in _features_imports(path):
            for target in _part(module, names) - {me}:
                assert target in ALLOWED[me], f"features/{'/'.join(rel)} imports {module} ({target}); " \
                                              f"{me} may import only {sorted(ALLOWED[me])}"


def test_only_jobs_bench_and_tests_use_the_evaluation_package():
    for folder in ("serving",):
        for path in (ROOT / folder).rglob("*.py"):
            for module, names in _features_imports(path):
                assert "evaluation" not in _part(module, names), f"{path.relative_to(ROOT)} imports {module}"


def test_modules_stay_small_and_no_private_name_crosses_a_module():
    for folder in ("features", "serving"):
        for path in (ROOT / folder).rglob("*.py"):
            n = len(path.read_text().splitlines())
            assert n <= 400, f"{path.relative_to(ROOT)} has {n} lines; split it by concern (limit 400)"
    for folder in ("features", "serving", "jobs", "bench", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                        "features", "serving", "jobs", "bench", "tests"):
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    assert not private, f"{path.relative_to(ROOT)} imports private {private} from {node.module}"


@pytest.mark.parametrize("args, message", [
    ({"encoder": {"runtime": "tensorrt"}}, "encoder.runtime='tensorrt'; allowed: onnx, torch"),
    ({"encoder": {"placement": "edge"}}, "encoder.placement='edge'; allowed: ingress, deployment"),
    ({"encoder": {"threads": 0}}, "encoder.threads must be >= 1"),
    ({"retriever_placement": "edge"}, "retriever_placement='edge'; allowed: ingress, deployment"),
])
def test_serving_encoder_settings_name_the_key_and_the_allowed_values(args, message):
    from serving.settings import ServingConfig

    with pytest.raises(ConfigError, match=message):
        ServingConfig.from_args(args)
